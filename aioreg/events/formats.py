"""What a webhook request carries: the body in the endpoint's format, and its signature.

Two formats: CloudEvents 1.0 (structured JSON mode) and Distribution's
notification envelope, with Distribution's field names, so receivers written
for either work unchanged. Every request is signed: HMAC-SHA256 with the
endpoint's secret over ``timestamp + "." + body`` (see the README for checking it).
"""

from __future__ import annotations

import hashlib
import hmac
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgspec

from aioreg.index.webhooks import OutboxEventRow

DISTRIBUTION = "distribution"  # else CloudEvents (config.WEBHOOK_FORMATS)
CLOUDEVENTS_MEDIA_TYPE = "application/cloudevents+json"
DISTRIBUTION_MEDIA_TYPE = "application/vnd.docker.distribution.events.v2+json"
CLOUDEVENTS_TYPE_PREFIX = "io.aioreg."

EVENT_ID_HEADER = "X-Aioreg-Event-Id"
EVENT_HEADER = "X-Aioreg-Event"
DELIVERY_HEADER = "X-Aioreg-Delivery"
TIMESTAMP_HEADER = "X-Aioreg-Timestamp"
SIGNATURE_HEADER = "X-Aioreg-Signature"

# Distribution knows push, pull, mount and delete; a tag delete is its "delete" with a
# tag. Actions it lacks keep aioreg's name (receivers ignore what they do not know).
_DISTRIBUTION_ACTIONS = {"tag_deleted": "delete"}
_REQUEST_METHODS = {"push": "PUT", "pull": "GET", "delete": "DELETE", "tag_deleted": "DELETE"}


@dataclass(frozen=True, slots=True)
class Source:
    """The registry sending: its public base URL, address and this run's instance id."""

    base_url: str
    addr: str
    instance_id: str


@dataclass(frozen=True, slots=True)
class Request:
    """One signed request, ready to send."""

    body: bytes
    headers: dict[str, str]


def _rfc3339(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _compact(values: dict[str, Any]) -> dict[str, Any]:
    """Leave out what is unknown, as Distribution's ``omitempty`` does."""
    return {k: v for k, v in values.items() if v not in (None, "", {}, [])}


def _manifest_url(source: Source, event: OutboxEventRow) -> str | None:
    if event.digest is None:
        return None
    return f"{source.base_url}/v2/{event.repository}/manifests/{event.digest}"


def cloudevent(event: OutboxEventRow, source: Source) -> dict[str, Any]:
    subject = event.repository + (f":{event.tag}" if event.tag else "")
    data = _compact(
        {
            "repository": event.repository,
            "tag": event.tag,
            "digest": event.digest,
            "mediaType": event.media_type,
            "size": event.size,
            "url": _manifest_url(source, event),
            "actor": event.actor,
            "requestId": event.request_id,
            **event.detail,
        }
    )
    return {
        "specversion": "1.0",
        "id": event.uid,
        "source": source.base_url,
        "type": CLOUDEVENTS_TYPE_PREFIX + event.action,
        "time": _rfc3339(event.at),
        "subject": subject,
        "datacontenttype": "application/json",
        "data": data,
    }


def distribution_event(event: OutboxEventRow, source: Source) -> dict[str, Any]:
    target = _compact(
        {
            "mediaType": event.media_type,
            "size": event.size,
            "digest": event.digest,
            "length": event.size,
            "repository": event.repository,
            "url": _manifest_url(source, event),
            "tag": event.tag,
        }
    )
    # Go's omitempty leaves struct fields in: target, request, actor, source are always there.
    return {
        "id": event.uid,
        "timestamp": _rfc3339(event.at),
        "action": _DISTRIBUTION_ACTIONS.get(event.action, event.action),
        "target": target,
        "request": {
            "id": event.request_id or "",
            "method": _REQUEST_METHODS.get(event.action, ""),
            "useragent": "",
        },
        "actor": _compact({"name": event.actor}),
        "source": {"addr": source.addr, "instanceID": source.instance_id},
    }


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """``sha256=<hex>``: HMAC-SHA256 of ``timestamp + "." + body`` keyed with the secret."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def render(
    event: OutboxEventRow,
    payload_format: str,
    source: Source,
    secret: str,
    delivery_id: int | None,
    now: float | None = None,
) -> Request:
    """The body in ``payload_format`` and the headers naming and signing it."""
    if payload_format == DISTRIBUTION:
        body = msgspec.json.encode({"events": [distribution_event(event, source)]})
        media_type = DISTRIBUTION_MEDIA_TYPE
    else:
        body = msgspec.json.encode(cloudevent(event, source))
        media_type = CLOUDEVENTS_MEDIA_TYPE
    timestamp = str(int(time.time() if now is None else now))
    headers = {
        "Content-Type": media_type,
        EVENT_ID_HEADER: event.uid,
        EVENT_HEADER: event.action,
        TIMESTAMP_HEADER: timestamp,
        SIGNATURE_HEADER: sign(secret, timestamp, body),
    }
    if delivery_id is not None:
        headers[DELIVERY_HEADER] = str(delivery_id)
    return Request(body, headers)
