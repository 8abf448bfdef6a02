"""Which snapshots generic `forget` may remove (coldkeep.ownership): only generic file snapshots."""

from __future__ import annotations

import pytest

from coldkeep.ownership import GENERIC_KIND, owner_of


def test_a_plain_file_snapshot_is_generic() -> None:
    assert owner_of(GENERIC_KIND, {}) is None
    assert owner_of("files", {"kind": "logs", "service": "nginx", "phase": "prod"}) is None  # user tags


def test_a_base_backup_belongs_to_pg_expire() -> None:
    owner = owner_of("pg-base", {"service": "postgres", "kind": "pg-base"})
    assert owner is not None and owner.service == "postgres" and not owner.tier1
    assert owner.retention == "coldkeep pg expire"
    assert "`coldkeep pg expire`" in owner.describe() and "`coldkeep pg expire`" in owner.hint()


@pytest.mark.parametrize("kind", ["dataset", "datasets", "checkpoint", "repro", "conversations"])
def test_tier1_kinds_and_kind_tags_are_never_generic(kind: str) -> None:
    for owner in (owner_of(kind, {}), owner_of("files", {"kind": kind})):
        assert owner is not None and owner.tier1 and owner.retention == ""
        assert "Tier-1" in owner.describe() and "never removed by a generic command" in owner.hint()


@pytest.mark.parametrize("service", ["postgres", "datasets", "checkpoints", "repro", "conversations"])
def test_a_file_snapshot_tagged_with_a_known_service_is_that_services(service: str) -> None:
    owner = owner_of("files", {"service": service})
    assert owner is not None and owner.service == service


def test_an_unknown_kind_is_owned_not_guessed_generic() -> None:
    owner = owner_of("drill-report", {})
    assert owner is not None and owner.service == "drill-report" and not owner.tier1
    assert "unknown kind" in owner.what and "drill-report" in owner.hint()


@pytest.mark.parametrize("value", ["Dataset", "DATASETS", " dataset ", "Checkpoint"])
def test_kind_tags_are_tier1_whatever_their_case(value: str) -> None:
    """`--tag kind=Dataset` was generic, so `forget` removed it despite the Tier-1 promise."""
    owner = owner_of("files", {"kind": value})
    assert owner is not None and owner.tier1
    assert owner_of("files", {"service": "Postgres"}) is not None


def test_tier_snapshots_belong_to_tiers_and_tier1_is_kept_forever() -> None:
    """`tiers backup` snapshots: generic `forget` never removes them; Tier 1 is Tier-1 data."""
    tier3 = owner_of("tier", {"tier": "3"})
    assert tier3 is not None and tier3.service == "tiers" and not tier3.tier1
    assert tier3.retention == "coldkeep tiers backup"
    tier1 = owner_of("tier", {"tier": "1"})
    assert tier1 is not None and tier1.service == "tiers" and tier1.tier1
