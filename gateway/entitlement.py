"""Who may see an entry: decided once, when the entry is appended, and stored with it.

Rules (DESIGN.md, "Exchange"):
- An ``AeoStatus`` record entitles partner P when, on the append day, the registry (default
  mode, no transport mode) says P recognises the record's issuer and type, the operator
  consented (and the status is not CONSENT_WITHDRAWN), and the audience, if any, includes P.
- Once P was entitled to a record of an authorisation (issuer, number, type), P also receives
  every later record of it up to and including the first one that ends the entitlement, so a
  change that stops recognition (revocation, consent withdrawn) always reaches P.
- A ``ValidationOutcome`` goes only to the administrations in its audience.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from gateway.records import AeoStatusRecord, Record, ValidationOutcomeRecord
from registry.errors import QuestionError
from registry.resolver import Recogniser


class Recognition:
    """Whether ``partner`` recognises (issuer, type) on a day, asked of the registry once per
    question: a publish decides thousands of records of a few issuers and types on one append
    day, and the registry's answer depends on nothing else."""

    def __init__(self, recogniser: Recogniser) -> None:
        self.recogniser = recogniser
        self._answers: dict[tuple[str, str, str, date], bool] = {}

    def recognised(self, partner: str, issuer: str, aeo_type: str, day: date) -> bool:
        key = (partner, issuer, aeo_type, day)
        answer = self._answers.get(key)
        if answer is None:
            try:
                answer = self.recogniser.check(partner, issuer, aeo_type, day).recognised
            except QuestionError:
                # A partner code or type the active dataset does not know: fail closed.
                answer = False
            self._answers[key] = answer
        return answer


def status_entitles(
    recogniser: Recogniser | Recognition, record: AeoStatusRecord, partner: str, day: date
) -> bool:
    if record.audience and partner not in record.audience:
        return False
    if not record.consent or record.status == "CONSENT_WITHDRAWN":
        return False
    if isinstance(recogniser, Recognition):
        return recogniser.recognised(partner, record.issuer, record.aeo_type, day)
    try:
        return recogniser.check(partner, record.issuer, record.aeo_type, day).recognised
    except QuestionError:
        # A partner code or type the active dataset does not know: fail closed.
        return False


@dataclass
class DisclosureDecision:
    """The partners an entry goes to, and the new open/closed state per authorisation."""

    partners: set[str]
    state_changes: dict[tuple[str, tuple[str, str, str]], bool]


def decide(
    recogniser: Recogniser | Recognition,
    record: Record,
    partners: list[str],
    day: date,
    open_state: dict[tuple[str, tuple[str, str, str]], bool],
) -> DisclosureDecision:
    """Decide one entry. ``open_state`` maps (partner, authorisation key) to "entitled now";
    it is updated in place so later records of the same chunk see earlier decisions."""
    decision = DisclosureDecision(set(), {})
    if isinstance(record, ValidationOutcomeRecord):
        decision.partners = {p for p in partners if p in record.audience}
        return decision
    for partner in partners:
        state_key = (partner, record.key)
        was_open = open_state.get(state_key, False)
        if status_entitles(recogniser, record, partner, day):
            decision.partners.add(partner)
            if not was_open:
                open_state[state_key] = True
                decision.state_changes[state_key] = True
        elif was_open and (not record.audience or partner in record.audience):
            # The record that ends the entitlement still reaches the partner, unless the
            # issuer's audience explicitly leaves it out (the issuer's choice wins).
            decision.partners.add(partner)
            open_state[state_key] = False
            decision.state_changes[state_key] = False
    return decision
