"""Vendors answering in ways their pages allow, through the real stack: timestamps with a
zone word, records that leave keys out, values the mapping does not know."""

from __future__ import annotations

import pytest

from tests.integration.drive import DEAL, as_held_by, others, person_creates, wait_converged
from tests.stack import Stack

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("how", ["sns", "getOpportunityList"])
def test_ivvy_record_stamped_with_utc_suffix_syncs(live: Stack, how: str) -> None:
    # given a deal a person created in iVvy, its times in iVvy's own form with the zone word
    # (`yyyy-mm-dd HH:mm:ss[ UTC]`, the IVVY-Date row of VENDORS.md)
    sim = live.sims["ivvy"]
    vendor_id = person_creates(live, "ivvy")
    with sim.state_lock:
        sim.records[vendor_id]["createdDate"] = "2026-01-05 09:00:00 UTC"
        sim.records[vendor_id]["modifiedDate"] = "2026-01-05 09:30:00 UTC"
    # when iVvy announces it: the record in the SNS notification, or only its id (then the
    # worker reads it with getOpportunityList)
    status = (
        sim.emit(vendor_id, "OpportunityAdded")
        if how == "sns"
        else sim.emit_standard(vendor_id, thin=True)
    )
    assert status == 202
    # then the other four vendors hold the deal
    wait_converged(live, others("ivvy"), as_held_by("ivvy", DEAL))
