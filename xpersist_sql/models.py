"""Pydantic models describing stored artifacts."""

from __future__ import annotations

import enum
from datetime import datetime, timezone
from typing import Any

import pydantic

__all__ = ["Artifact", "DuplicateKeyEnum"]


class DuplicateKeyEnum(str, enum.Enum):
    """What :meth:`CacheStore.put` does when the key is already stored.

    - ``skip``: keep the stored artifact and return it.
    - ``overwrite``: replace payload and metadata.
    - ``check_collision``: same content is skipped, different content raises
      :class:`~xpersist_sql.CollisionError`.
    - ``raise_error``: raise :class:`~xpersist_sql.DuplicateKeyError`.
    """

    skip = "skip"
    overwrite = "overwrite"
    check_collision = "check_collision"
    raise_error = "raise_error"

    @classmethod
    def _missing_(cls, value: object) -> DuplicateKeyEnum:
        raise ValueError(
            f"on_duplicate_key={value!r} is not one of the valid values: 'skip' (keep the stored "
            "artifact), 'overwrite' (replace it), 'check_collision' (keep it if the content is "
            "the same, else raise CollisionError) or 'raise_error' (raise DuplicateKeyError)"
        )


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Artifact(pydantic.BaseModel):
    """The metadata of one stored payload.

    Attributes
    ----------
    key : str
        The payload's path relative to the store root.
    serializer : str
        Name of the serializer that wrote the payload.
    load_kwargs, dump_kwargs : dict
        Keyword arguments used when loading / used when dumping.
    additional_metadata : dict
        Free-form JSON metadata (the Prefect run context lives here).
    created_at : datetime
        When the artifact was recorded (timezone-aware UTC).
    size_bytes : int or None
        Total size of the payload (all files for directory payloads).
    checksum : str or None
        ``sha256:<hex>`` content hash when computed (``checksum=True``).
    fingerprint : str or None
        Cheap storage fingerprint (sizes, mtimes or ETags, file count).
    expires_at : datetime or None
        When the artifact stops counting as present, if it has a ttl.
    versions : dict
        Versions of the libraries that wrote the payload.
    """

    model_config = pydantic.ConfigDict(validate_assignment=True)

    key: str
    serializer: str
    load_kwargs: dict[str, Any] = pydantic.Field(default_factory=dict)
    dump_kwargs: dict[str, Any] = pydantic.Field(default_factory=dict)
    additional_metadata: dict[str, Any] = pydantic.Field(default_factory=dict)
    created_at: datetime = pydantic.Field(default_factory=_utcnow)
    size_bytes: int | None = None
    checksum: str | None = None
    fingerprint: str | None = None
    expires_at: datetime | None = None
    versions: dict[str, str] = pydantic.Field(default_factory=dict)

    @pydantic.field_validator("created_at", "expires_at")
    @classmethod
    def _as_utc(cls, value: datetime | None) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)

    @pydantic.field_validator("load_kwargs", "dump_kwargs", "additional_metadata", mode="before")
    @classmethod
    def _none_is_empty(cls, value: Any) -> Any:
        return {} if value is None else value

    def is_expired(self, now: datetime | None = None) -> bool:
        """Return whether the artifact's ``expires_at`` has passed."""
        if self.expires_at is None:
            return False
        return self.expires_at <= (now or _utcnow())
