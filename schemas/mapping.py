"""The mapping tables: stages, statuses, owners and field ownership, per vendor.

Loaded from the TOML file named by ``OPPSYNC_MAPPING`` (see ``mapping.example.toml``) and
validated here; with no file, ``Mapping()`` holds the documented defaults. Vendor ids are
kept as strings (iVvy's integers included) so lookups work both ways.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from marshmallow import (
    RAISE,
    Schema,
    ValidationError,
    fields,
    post_load,
    validate,
    validates_schema,
)

from schemas.opportunity import SYNCED_FIELDS, Status

VENDORS: tuple[str, ...] = ("siro", "leadway", "ivvy", "salescaling", "icloudready")

#: Status values per vendor when the mapping file says nothing (DESIGN.md, contract details).
DEFAULT_STATUSES: dict[str, dict[Status, str]] = {
    "siro": {Status.OPEN: "OPEN", Status.WON: "WON", Status.LOST: "LOST", Status.ABANDONED: "LOST"},
    "leadway": {s: s.value for s in Status},
    "salescaling": {s: s.value for s in Status},
    "icloudready": {
        Status.OPEN: "active",
        Status.WON: "won",
        Status.LOST: "lost",
        Status.ABANDONED: "abandoned",
    },
}


@dataclass(frozen=True)
class Stage:
    """One canonical stage and what each vendor calls it."""

    name: str
    status: Status
    ids: dict[str, str] = field(default_factory=dict)
    ivvy_type_id: str | None = None
    ivvy_source_id: str | None = None


@dataclass(frozen=True)
class Mapping:
    stages: tuple[Stage, ...] = ()
    statuses: dict[str, dict[Status, str]] = field(default_factory=dict)
    owners: dict[str, dict[str, str]] = field(default_factory=dict)
    ownership: dict[str, str] = field(default_factory=dict)
    icloudready_customer: str | None = None

    # -- status --------------------------------------------------------------------------
    def status_out(self, vendor: str, status: Status) -> str:
        table = {**DEFAULT_STATUSES.get(vendor, {}), **self.statuses.get(vendor, {})}
        return table[status]

    def status_in(self, vendor: str, value: str | None) -> Status | None:
        """The canonical status for a vendor's value.

        When several statuses share one value (SIRO's LOST stands for lost and abandoned),
        the status named like the value wins, else the first in open/won/lost/abandoned order.
        """
        if value is None:
            return None
        table = {**DEFAULT_STATUSES.get(vendor, {}), **self.statuses.get(vendor, {})}
        wanted = str(value).lower()
        candidates = [s for s in Status if table.get(s, "").lower() == wanted]
        if not candidates:
            return None
        return next((s for s in candidates if s.value == wanted), candidates[0])

    # -- stages --------------------------------------------------------------------------
    def stage_id(self, vendor: str, stage_name: str | None) -> str | None:
        for stage in self.stages:
            if stage.name == stage_name:
                return stage.ids.get(vendor)
        return None

    def stage_by_vendor_id(self, vendor: str, vendor_stage_id: object) -> Stage | None:
        if vendor_stage_id is None:
            return None
        for stage in self.stages:
            if stage.ids.get(vendor) == str(vendor_stage_id):
                return stage
        return None

    def maps_stages(self, vendor: str) -> bool:
        """Whether the mapping names any of this vendor's stages: when it does, a stage id
        it does not list is a value to report, not merely a stage oppsync does not sync."""
        return any(vendor in stage.ids for stage in self.stages)

    def stage_for_status(self, vendor: str, status: Status | None) -> Stage | None:
        """The first stage with this status that the vendor has an id for."""
        for stage in self.stages:
            if stage.status == status and vendor in stage.ids:
                return stage
        return None

    def stage_named(self, name: str | None) -> Stage | None:
        return next((s for s in self.stages if s.name == name), None)

    # -- owners --------------------------------------------------------------------------
    def owner_id(self, vendor: str, email: str | None) -> str | None:
        if email is None:
            return None
        return self.owners.get(email.lower(), {}).get(vendor)

    def owner_email(self, vendor: str, vendor_user_id: object) -> str | None:
        if vendor_user_id is None:
            return None
        for email, ids in self.owners.items():
            if ids.get(vendor) == str(vendor_user_id):
                return email
        return None


_vendor_field = validate.OneOf(VENDORS)


def _vendor_id_map(data: dict[str, Any]) -> dict[str, str]:
    return {v: str(data[v]) for v in VENDORS if data.get(v) is not None}


class _StageSchema(Schema):
    class Meta:
        unknown = RAISE

    name = fields.String(required=True, validate=validate.Length(min=1))
    status = fields.Enum(Status, by_value=True, required=True)
    siro = fields.String()
    leadway = fields.String()
    ivvy = fields.Integer()
    salescaling = fields.String()
    icloudready = fields.String()
    ivvy_type_id = fields.Integer()
    ivvy_source_id = fields.Integer()

    @post_load
    def make(self, data: dict[str, Any], **_: Any) -> Stage:
        return Stage(
            name=data["name"],
            status=data["status"],
            ids=_vendor_id_map(data),
            ivvy_type_id=str(data["ivvy_type_id"]) if "ivvy_type_id" in data else None,
            ivvy_source_id=str(data["ivvy_source_id"]) if "ivvy_source_id" in data else None,
        )


class _OwnerSchema(Schema):
    class Meta:
        unknown = RAISE

    siro = fields.String()
    leadway = fields.String()
    ivvy = fields.Integer()
    salescaling = fields.String()
    icloudready = fields.String()


class _StatusTableSchema(Schema):
    class Meta:
        unknown = RAISE

    open = fields.String()
    won = fields.String()
    lost = fields.String()
    abandoned = fields.String()


class MappingFileSchema(Schema):
    """The mapping file, validated: unknown keys, vendors, statuses and fields are errors."""

    class Meta:
        unknown = RAISE

    stages = fields.List(fields.Nested(_StageSchema), load_default=list)
    statuses = fields.Dict(
        keys=fields.String(validate=_vendor_field),
        values=fields.Nested(_StatusTableSchema),
        load_default=dict,
    )
    owners = fields.Dict(keys=fields.Email(), values=fields.Nested(_OwnerSchema), load_default=dict)
    ownership = fields.Dict(
        keys=fields.String(validate=validate.OneOf(SYNCED_FIELDS)),
        values=fields.String(validate=_vendor_field),
        load_default=dict,
    )
    icloudready = fields.Dict(
        keys=fields.String(validate=validate.OneOf(["customer"])),
        values=fields.String(),
        load_default=dict,
    )

    @validates_schema
    def unique_stage_names(self, data: dict[str, Any], **_: Any) -> None:
        names = [stage.name for stage in data.get("stages", [])]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValidationError(f"stage names must be unique: {', '.join(duplicates)}", "stages")

    @post_load
    def make(self, data: dict[str, Any], **_: Any) -> Mapping:
        return Mapping(
            stages=tuple(data["stages"]),
            statuses={
                vendor: {Status(k): v for k, v in table.items()}
                for vendor, table in data["statuses"].items()
            },
            owners={email.lower(): _vendor_id_map(ids) for email, ids in data["owners"].items()},
            ownership=dict(data["ownership"]),
            icloudready_customer=data["icloudready"].get("customer"),
        )


def parse_mapping(document: dict[str, Any]) -> Mapping:
    """Build a ``Mapping`` from a parsed TOML document; raises ``ValidationError``."""
    return MappingFileSchema().load(document)
