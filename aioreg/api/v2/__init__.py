"""The OCI distribution-spec endpoints: ``/v2/...`` and ``/token``."""
