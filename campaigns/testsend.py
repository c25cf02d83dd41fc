"""Test sends: a few addresses get the campaign's rendered message now, through the normal pipeline
(dispatcher, gateway queue, send worker, receipts), without touching the campaign's own counts.

Each test send is a small campaign of its own, marked `options.test_of = <campaign id>`: a copy of
the campaign's channel, sender, template and encoding, high priority, no window, a one-hour
deadline. The campaign's counts, stats and reports only ever look at its own messages, so test
messages cannot appear in them; the listing hides test sends unless asked with `?test_of=`.
Every value is checked before anything is stored: a placeholder without a value, a template that
does not render, or characters the encoding policy cannot carry answer 422.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlmodel import Session

from accounts.models import ApiKey
from accounts.service import audit
from campaigns.lifecycle import Action, next_status
from campaigns.models import Campaign, CampaignStatus, Channel, Priority
from campaigns.preview import masked, sample_for
from campaigns.recipients import ImportResult, RecipientImporter
from campaigns.schemas import RecipientIn
from campaigns.service import INTERNAL_OPTIONS, TEST_OF, check_template_text
from loa.crypto import SecretBox
from loa.errors import Invalid
from loa.timeutil import utcnow

TEST_DEADLINE = timedelta(hours=1)


@dataclass
class TestSend:
    campaign: Campaign
    samples: list[dict[str, Any]]
    result: ImportResult

    __test__ = False  # not a pytest test class


def _check_recipient(campaign: Campaign, index: int, recipient: RecipientIn, used: set[str]) -> dict[str, Any]:
    """Render one test recipient for real (then drop it) and masked (to show it)."""
    values = {k: "" if v is None else str(v) for k, v in recipient.fields.items()}
    missing = sorted(used - set(values))
    where = f"recipients[{index}]"
    if missing:
        names = ", ".join(f"{{{{ {m} }}}}" for m in missing)
        raise Invalid(
            f"{where}: no value for {names} in fields",
            {"recipient": index, "placeholders": missing},
            code="unknown_placeholder",
        )
    real = sample_for(campaign, recipient.to, values)
    if real.get("error"):
        details: dict[str, Any] = {"recipient": index, "reason": real["error"]}
        if "characters" in real:
            details["characters"] = real["characters"]
        raise Invalid(f"{where}: {real['error']}", details, code="unencodable" if "characters" in real else "render")
    return sample_for(campaign, recipient.to, {**values, **masked(campaign)})


def start_test_send(
    session: Session, campaign: Campaign, key: ApiKey, recipients: list[RecipientIn], box: SecretBox
) -> TestSend:
    used = check_template_text(campaign.template, campaign.encoding, campaign.channel)
    samples = [_check_recipient(campaign, i, r, used) for i, r in enumerate(recipients, start=1)]
    now = utcnow()
    test = Campaign(
        org_id=campaign.org_id,
        name=f"{campaign.name} [test]"[:200],
        channel=campaign.channel,
        sender=campaign.sender,
        template=dict(campaign.template),
        encoding=campaign.encoding,
        secret_fields=list(campaign.secret_fields),
        deadline=now + TEST_DEADLINE,
        rate_limit=campaign.rate_limit,
        priority=Priority.HIGH,
        options={k: v for k, v in campaign.options.items() if k not in INTERNAL_OPTIONS} | {TEST_OF: campaign.id},
        created_by=key.id,
    )
    session.add(test)
    session.flush()
    result = RecipientImporter(session, test, box).import_json([r.model_dump() for r in recipients])
    if result.rejected:
        raise Invalid(
            f"{result.rejected} test recipients are not valid: {result.errors[0]['reason']}",
            {"errors": result.errors},
            code="invalid_recipients",
        )
    test.status = next_status(next_status(CampaignStatus.DRAFT, Action.LAUNCH), Action.START)
    test.launched_at = now
    test.updated_at = now
    audit(
        session,
        campaign.org_id,
        key.id,
        "campaign.test",
        campaign.id,
        test_campaign=test.id,
        recipients=len(recipients),
        channel=Channel(campaign.channel).value,
    )
    return TestSend(campaign=test, samples=samples, result=result)
