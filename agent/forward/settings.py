"""The ``[forward]`` table: where instances go, and how hard we try.

```toml
[forward]
to = ["PACS"]            # every instance goes to these peers
retry_first = 30         # seconds before retrying a transient failure, doubling...
retry_max = 600          # ...up to this cap
permanent_tries = 3      # a permanent failure is tried this often, then quarantined
keep_days = 7            # keep delivered instances this long (0: remove once delivered)
associations = 2         # associations per destination at once (1 to 8)
retain_until = "delivered"  # or "committed": retention also waits for storage commitment
mpps_to = ["RIS"]        # every MPPS N-CREATE and N-SET taken is passed on to these peers
when = "instance"        # or "complete": hold a study's instances until it is complete

[[forward.rules]]        # ordered; every rule that matches adds its destinations
to = ["RESEARCH"]
match = { calling_ae = "MR*", Modality = "MR" }
when = "complete"        # optional: this rule's destinations, else forward.when
```

``when = "complete"`` acts per study: an instance's jobs for such a destination are
queued ``held`` and released in the transaction that makes its study complete (MPPS,
the modality's commitment request, the quiet period, or the give-up time), so that the
whole study goes over one association in series and instance order and a ``commit =
true`` destination is asked once per study; a re-opened study sends only what is new.
A destination named by ``forward.to`` follows ``forward.when``; one a rule adds follows
that rule's ``when``; named twice, the first that names it (``forward.to``, then the
rules in order) decides. A reload changes how new instances are queued; jobs already
held wait for their study.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any

from pydicom.datadict import tag_for_keyword

from agent import validation as v
from agent.errors import ConfigError
from agent.outgoing.settings import Coercion, rule_coercion
from agent.reloading import LIVE

CALLING_AE = "calling_ae"
MAX_ASSOCIATIONS = 8
RETAIN_UNTIL = ("delivered", "committed")
INSTANCE, COMPLETE = "instance", "complete"
WHEN = (INSTANCE, COMPLETE)


@dataclass(frozen=True)
class Rule:
    """Send instances whose header matches every pattern to more destinations."""

    to: Annotated[tuple[str, ...], LIVE]
    match: Annotated[Mapping[str, str], LIVE]
    when: Annotated[str, LIVE] = INSTANCE  # "complete": held until the study is complete
    # what its destinations receive changed (issue 25): agent/outgoing/settings.py
    coerce: Annotated[Coercion | None, LIVE] = None


@dataclass(frozen=True)
class ForwardSettings:
    """Validated ``[forward]`` settings."""

    to: Annotated[tuple[str, ...], LIVE] = ()
    rules: Annotated[tuple[Rule, ...], LIVE] = ()
    retry_first: Annotated[float, LIVE] = 30.0
    retry_max: Annotated[float, LIVE] = 600.0
    permanent_tries: Annotated[int, LIVE] = 3
    keep_days: Annotated[float, LIVE] = 7.0
    associations: Annotated[int, LIVE] = 2
    retain_until: Annotated[str, LIVE] = "delivered"
    destinations: Annotated[frozenset[str], LIVE] = field(default_factory=frozenset)
    mpps_to: Annotated[tuple[str, ...], LIVE] = ()
    when: Annotated[str, LIVE] = INSTANCE  # forward.to's destinations: per instance or study


def parse_forward(table: Mapping[str, Any], peers: Mapping[str, object]) -> ForwardSettings:
    """Validate ``[forward]`` against the configured peers."""
    d = ForwardSettings()
    known = {
        "to",
        "rules",
        "retry_first",
        "retry_max",
        "permanent_tries",
        "keep_days",
        "associations",
        "retain_until",
        "mpps_to",
        "when",
    }
    v.reject_unknown(table, known, "forward")
    to = _peer_list(table, "forward.to", peers)
    when = v.get(table, "forward.when", str, d.when, v.one_of(WHEN))
    rules = tuple(
        _rule(item, f"forward.rules[{i}]", peers, when)
        for i, item in enumerate(v.get(table, "forward.rules", list, [], None))
    )
    settings = ForwardSettings(
        to=to,
        rules=rules,
        retry_first=float(
            v.get(table, "forward.retry_first", (int, float), d.retry_first, v.positive)
        ),
        retry_max=float(v.get(table, "forward.retry_max", (int, float), d.retry_max, v.positive)),
        permanent_tries=v.get(
            table, "forward.permanent_tries", int, d.permanent_tries, v.at_least(1)
        ),
        keep_days=float(
            v.get(table, "forward.keep_days", (int, float), d.keep_days, v.at_least(0))
        ),
        associations=v.get(
            table, "forward.associations", int, d.associations, v.between(1, MAX_ASSOCIATIONS)
        ),
        retain_until=v.get(
            table, "forward.retain_until", str, d.retain_until, v.one_of(RETAIN_UNTIL)
        ),
        destinations=frozenset(to).union(*(rule.to for rule in rules)),
        mpps_to=_peer_list(table, "forward.mpps_to", peers),
        when=when,
    )
    if settings.retry_max < settings.retry_first:
        v.problem(ConfigError("forward.retry_max", "must not be less than forward.retry_first"))
    return settings


def _peer_list(table: Mapping[str, Any], key: str, peers: Mapping[str, object]) -> tuple[str, ...]:
    names = v.get(table, key, list, [], None)
    for name in names:
        if name not in peers:
            v.problem(ConfigError(key, f"{name!r} is not a configured peer"))
    return tuple(name for name in names if name in peers)


def _rule(item: Any, where: str, peers: Mapping[str, object], when: str) -> Rule:
    """One ``[[forward.rules]]`` entry; its ``when`` defaults to ``forward.when``."""
    if not isinstance(item, dict):
        v.problem(ConfigError(where, "a rule is a table with 'to' and 'match'"))
        return Rule(to=(), match={})
    v.reject_unknown(item, {"to", "match", "when", "coerce"}, where)
    to = _peer_list(item, f"{where}.to", peers)
    if not to and not item.get("to"):
        v.problem(ConfigError(f"{where}.to", "a rule needs at least one destination"))
    match = v.get(item, f"{where}.match", dict, {}, None)
    for keyword, pattern in match.items():
        if keyword != CALLING_AE and tag_for_keyword(keyword) is None:
            v.problem(
                ConfigError(f"{where}.match.{keyword}", "is not a DICOM keyword or calling_ae")
            )
        if not isinstance(pattern, str):
            v.problem(ConfigError(f"{where}.match.{keyword}", "a pattern is a string"))
    rule_when = v.get(item, f"{where}.when", str, when, v.one_of(WHEN))
    return Rule(to=to, match=dict(match), when=rule_when, coerce=rule_coercion(item, where))
