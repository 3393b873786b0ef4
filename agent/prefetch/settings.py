"""``[[prefetch]]`` rules: when a study arrives from a modality (or an MPPS announces
one), pull that patient's priors from a peer, within limits.

```toml
[[prefetch]]
from = ["CT1"]                 # a study arriving from these peers...
priors_from = "PACS"           # ...pulls that patient's priors from here
modality = "same"              # or a list ("CT", "MR"), or "any"
within_years = 5
max_studies = 3
max_megabytes = 2000
```
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any

from agent import validation as v
from agent.errors import ConfigError
from agent.reloading import LIVE

SAME, ANY = "same", "any"


@dataclass(frozen=True)
class PrefetchRule:
    """One rule: whose new studies trigger it, where priors come from, which and how many."""

    from_peers: Annotated[tuple[str, ...], LIVE]
    priors_from: Annotated[str, LIVE]
    # "same": the new study's modalities; "any"; or these modalities
    modality: Annotated[str | tuple[str, ...], LIVE] = SAME
    within_years: Annotated[float, LIVE] = 5.0
    max_studies: Annotated[int, LIVE] = 3
    max_megabytes: Annotated[int, LIVE] = 2000


def parse_prefetch(items: Any, peers: Mapping[str, object]) -> tuple[PrefetchRule, ...]:
    """Validate the ``[[prefetch]]`` array of tables against the configured peers."""
    if not isinstance(items, list):
        v.problem(ConfigError("prefetch", "is an array of tables: [[prefetch]]"))
        return ()
    return tuple(
        rule for i, item in enumerate(items)
        if (rule := _rule(item, f"prefetch[{i}]", peers)) is not None
    )


def _rule(item: Any, where: str, peers: Mapping[str, object]) -> PrefetchRule | None:
    if not isinstance(item, dict):
        v.problem(ConfigError(where, "a rule is a table with 'from' and 'priors_from'"))
        return None
    known = {"from", "priors_from", "modality", "within_years", "max_studies", "max_megabytes"}
    v.reject_unknown(item, known, where)
    d = PrefetchRule((), "")
    sources = v.get(item, f"{where}.from", list, [], None)
    for name in sources:
        if name not in peers:
            v.problem(ConfigError(f"{where}.from", f"{name!r} is not a configured peer"))
    if not sources:
        v.problem(ConfigError(f"{where}.from", "names at least one peer"))
    priors_from = v.get(item, f"{where}.priors_from", str, "", None)
    if priors_from not in peers:
        v.problem(ConfigError(f"{where}.priors_from", f"{priors_from!r} is not a configured peer"))
    return PrefetchRule(
        from_peers=tuple(name for name in sources if name in peers),
        priors_from=priors_from,
        modality=_modality(item, f"{where}.modality"),
        within_years=float(v.get(
            item, f"{where}.within_years", (int, float), d.within_years, v.positive
        )),
        max_studies=v.get(item, f"{where}.max_studies", int, d.max_studies, v.at_least(1)),
        max_megabytes=v.get(
            item, f"{where}.max_megabytes", int, d.max_megabytes, v.at_least(1)
        ),
    )


def _modality(item: Mapping[str, Any], key: str) -> str | tuple[str, ...]:
    """"same", "any", or a list of modality codes (CS: upper case, at most 16)."""
    value = v.get(item, key, (str, list), SAME, None)
    if isinstance(value, str):
        if value not in (SAME, ANY):
            v.problem(ConfigError(key, f"is 'same', 'any' or a list of modalities, not {value!r}"))
            return SAME
        return value
    codes = tuple(str(code).strip().upper() for code in value)
    if not codes or any(not code or len(code) > 16 for code in codes):
        v.problem(ConfigError(key, "a list of modality codes (CT, MR...), none empty"))
        return ANY
    return codes
