"""Round trips with real clients: skopeo and podman from Debian, against ``aioreg serve``."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.images import OCI_INDEX, multi_platform, single_image
from tests.process import Server, free_port, start

TIMEOUT = 180


def run(*args: str) -> str:
    result = subprocess.run(args, capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stderr}"
    return result.stdout


def fails(*args: str) -> bool:
    """True when the command exits non-zero (a refusal the test expects)."""
    result = subprocess.run(args, capture_output=True, text=True, timeout=TIMEOUT)
    return result.returncode != 0


def login(tool: list[str], authfile: str, registry: str, user: str, password: str) -> list[str]:
    return [
        *tool,
        "login",
        "--tls-verify=false",
        "--authfile",
        authfile,
        "-u",
        user,
        "-p",
        password,
        registry,
    ]


def skopeo(*args: str) -> str:
    return run("skopeo", *args)


def files_by_hash(layout: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in (layout / "blobs" / "sha256").iterdir()
    }


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if shutil.which("skopeo") is None:
        pytest.skip("skopeo is not installed (.ci/run installs it)")
    port = free_port()
    data = tmp_path_factory.mktemp("registry")
    started: list[Server] = []
    server = start(started, ["--listen", f"127.0.0.1:{port}", "--data", str(data)])
    yield f"127.0.0.1:{port}"
    assert server.stop() == 0, server.output


def test_skopeo_copy_round_trip_is_byte_identical(registry: str, tmp_path: Path) -> None:
    image = single_image(tmp_path / "src", "single")
    ref = f"docker://{registry}/team/app/api:v1"
    skopeo("copy", "--dest-tls-verify=false", f"oci:{tmp_path / 'src'}:latest", ref)
    raw = skopeo("inspect", "--raw", "--tls-verify=false", ref)
    assert raw.encode() == image.manifest
    info = json.loads(skopeo("inspect", "--tls-verify=false", ref))
    assert info["Digest"] == image.manifest_digest
    assert info["Architecture"] == "amd64"
    assert len(info["Layers"]) == 2
    skopeo("copy", "--src-tls-verify=false", ref, f"oci:{tmp_path / 'back'}:latest")
    assert files_by_hash(tmp_path / "back") == files_by_hash(tmp_path / "src")


def test_skopeo_copy_all_of_a_two_platform_index(registry: str, tmp_path: Path) -> None:
    digest, index, images = multi_platform(tmp_path / "src", "multi")
    ref = f"docker://{registry}/frontend/web:multi"
    skopeo("copy", "--all", "--dest-tls-verify=false", f"oci:{tmp_path / 'src'}:latest", ref)
    raw = skopeo("inspect", "--raw", "--tls-verify=false", ref)
    assert raw.encode() == index
    assert json.loads(raw)["mediaType"] == OCI_INDEX
    for image in images:
        child = f"docker://{registry}/frontend/web@{image.manifest_digest}"
        assert skopeo("inspect", "--raw", "--tls-verify=false", child).encode() == image.manifest
    skopeo("copy", "--all", "--src-tls-verify=false", ref, f"oci:{tmp_path / 'back'}:latest")
    assert files_by_hash(tmp_path / "back") == files_by_hash(tmp_path / "src")
    back_index = json.loads((tmp_path / "back" / "index.json").read_text())
    assert back_index["manifests"][0]["digest"] == digest


def test_skopeo_list_tags_and_delete(registry: str, tmp_path: Path) -> None:
    repo = f"docker://{registry}/team/tagged"
    kept = single_image(tmp_path / "kept", "kept")
    doomed = single_image(tmp_path / "doomed", "doomed")
    for tag in ("v2", "v10", "latest", "A-upper"):
        skopeo(
            "copy", "--dest-tls-verify=false", f"oci:{tmp_path / 'kept'}:latest", f"{repo}:{tag}"
        )
    skopeo("copy", "--dest-tls-verify=false", f"oci:{tmp_path / 'doomed'}:latest", f"{repo}:old")
    tags = json.loads(skopeo("list-tags", "--tls-verify=false", repo))["Tags"]
    assert tags == sorted(["v2", "v10", "latest", "A-upper", "old"])
    skopeo("delete", "--tls-verify=false", f"{repo}:old")
    assert fails("skopeo", "inspect", "--raw", "--tls-verify=false", f"{repo}:old")
    assert fails(
        "skopeo", "inspect", "--raw", "--tls-verify=false", f"{repo}@{doomed.manifest_digest}"
    )
    tags = json.loads(skopeo("list-tags", "--tls-verify=false", repo))["Tags"]
    assert tags == sorted(["v2", "v10", "latest", "A-upper"])
    assert skopeo("inspect", "--raw", "--tls-verify=false", f"{repo}:v2").encode() == kept.manifest


def test_skopeo_copy_between_repositories_mounts_blobs(registry: str, tmp_path: Path) -> None:
    image = single_image(tmp_path / "src", "mounted")
    first, second = f"docker://{registry}/mount/one:v1", f"docker://{registry}/mount/two:v1"
    skopeo("copy", "--dest-tls-verify=false", f"oci:{tmp_path / 'src'}:latest", first)
    skopeo("copy", "--src-tls-verify=false", "--dest-tls-verify=false", first, second)
    for i, ref in enumerate((first, second)):
        assert skopeo("inspect", "--raw", "--tls-verify=false", ref).encode() == image.manifest
        skopeo("copy", "--src-tls-verify=false", ref, f"oci:{tmp_path / f'back{i}'}:latest")
        assert files_by_hash(tmp_path / f"back{i}") == files_by_hash(tmp_path / "src")


def test_podman_pull_tag_push_pull(registry: str, tmp_path: Path, podman: list[str]) -> None:
    image = single_image(tmp_path / "src", "podman")
    source = f"{registry}/team/app/api:v2"
    skopeo(
        "copy", "--dest-tls-verify=false", f"oci:{tmp_path / 'src'}:latest", f"docker://{source}"
    )
    run(*podman, "pull", "--tls-verify=false", source)
    target = f"{registry}/other/copy:latest"
    run(*podman, "tag", source, target)
    run(*podman, "push", "--tls-verify=false", target)
    run(*podman, "rmi", "--force", source, target)
    run(*podman, "pull", "--tls-verify=false", target)
    inspected = json.loads(run(*podman, "image", "inspect", target))[0]
    assert inspected["RootFS"]["Layers"] == image.diff_ids
    pushed = json.loads(skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{target}"))
    assert len(pushed["layers"]) == len(image.layers)
    config = json.loads(skopeo("inspect", "--config", "--tls-verify=false", f"docker://{target}"))
    assert config["rootfs"]["diff_ids"] == image.diff_ids


@pytest.fixture(scope="module")
def auth_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A registry with access control on, an admin from the environment and a user alice."""
    if shutil.which("skopeo") is None:
        pytest.skip("skopeo is not installed (.ci/run installs it)")
    port = free_port()
    data = tmp_path_factory.mktemp("auth-registry")
    started: list[Server] = []
    server = start(
        started,
        ["--listen", f"127.0.0.1:{port}", "--data", str(data), "--auth"],
        {"AIOREG_AUTH_ADMIN_PASSWORD": "admin-pw"},
    )
    subprocess.run(
        [
            sys.executable,
            "-m",
            "aioreg",
            "user",
            "add",
            "alice",
            "--password-stdin",
            "--data",
            str(data),
        ],
        input="alice-pw\n",
        text=True,
        check=True,
        capture_output=True,
        timeout=60,
    )
    yield f"127.0.0.1:{port}", data
    assert server.stop() == 0, server.output


def test_skopeo_login_and_copy_with_credentials(
    auth_registry: tuple[str, Path], tmp_path: Path
) -> None:
    registry, _ = auth_registry
    authfile = str(tmp_path / "auth.json")
    assert fails(*login(["skopeo"], authfile, registry, "alice", "wrong"))
    run(*login(["skopeo"], authfile, registry, "alice", "alice-pw"))
    image = single_image(tmp_path / "src", "authed")
    ref = f"docker://{registry}/alice/app:v1"
    assert fails(
        "skopeo", "copy", "--dest-tls-verify=false", f"oci:{tmp_path / 'src'}:latest", ref
    )  # anonymous push
    skopeo(
        "copy",
        "--dest-tls-verify=false",
        "--dest-creds",
        "alice:alice-pw",
        f"oci:{tmp_path / 'src'}:latest",
        ref,
    )
    raw = skopeo("inspect", "--raw", "--tls-verify=false", "--authfile", authfile, ref)
    assert raw.encode() == image.manifest
    skopeo(
        "copy",
        "--src-tls-verify=false",
        "--src-creds",
        "alice:alice-pw",
        ref,
        f"oci:{tmp_path / 'back'}:latest",
    )
    assert files_by_hash(tmp_path / "back") == files_by_hash(tmp_path / "src")
    # Someone else's namespace: refused even with valid credentials.
    assert fails(
        "skopeo",
        "copy",
        "--dest-tls-verify=false",
        "--dest-creds",
        "alice:alice-pw",
        f"oci:{tmp_path / 'src'}:latest",
        f"docker://{registry}/admin/app:v1",
    )


def test_podman_login_and_push_with_creds(
    auth_registry: tuple[str, Path], tmp_path: Path, podman: list[str]
) -> None:
    registry, _ = auth_registry
    image = single_image(tmp_path / "src", "podman-auth")
    source = f"{registry}/alice/src:v1"
    skopeo(
        "copy",
        "--dest-tls-verify=false",
        "--dest-creds",
        "alice:alice-pw",
        f"oci:{tmp_path / 'src'}:latest",
        f"docker://{source}",
    )
    authfile = str(tmp_path / "podman-auth.json")
    run(*login(podman, authfile, registry, "alice", "alice-pw"))
    run(*podman, "pull", "--tls-verify=false", "--authfile", authfile, source)
    target = f"{registry}/alice/pushed:latest"
    run(*podman, "tag", source, target)
    run(*podman, "push", "--tls-verify=false", "--creds", "alice:alice-pw", target)
    config = json.loads(
        skopeo(
            "inspect",
            "--config",
            "--tls-verify=false",
            "--creds",
            "alice:alice-pw",
            f"docker://{target}",
        )
    )
    assert config["rootfs"]["diff_ids"] == image.diff_ids
