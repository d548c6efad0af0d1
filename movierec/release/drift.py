"""The release record is the desired state: what each variant is deployed with and answers with,
checked every step, drift re-applied, and the analysis window restarted.

During a release `recommend` must serve the release's stable version and `recommend-canary` its
candidate. Other things change deployments behind the controller's back: `faas-cli deploy -f
stack.yml` (MODEL_VERSION=${CANARY_MODEL_VERSION:-stable}), a runtime that comes back with
stack.yml's defaults, a stray hand edit. So each step, before anything is measured, `reconcile`:
- reads each variant's MODEL_VERSION (DeploymentReader.env_of; an alias such as `stable` is
  resolved through the registry) and what it answers with (ServingProbe.served_version: PROBES
  `GET /function/<fn>/health` calls through the gateway, each naming the model of the replica
  that answered; the gateway's metrics carry no model label, so they cannot say);
- a variant whose MODEL_VERSION resolves to another version, or that answers with another
  version, has drifted: it is redeployed with the release's version, and the analysis window
  restarts (`serving_since` cleared): evidence gathered while a variant served something else is
  not the candidate's, so the window (and its minimum sample) starts again once both variants are
  verified serving their versions;
- a probe that cannot tell (no answer in time, no model loaded yet) neither verifies nor restarts:
  the step does not decide on it, and says so.
Each of these is an event of the release, with its time (`Release.events`): `drift_seen`,
`reapplied`, `window_restarted`, `serving_verified`, `unverified`.

The probes are calls of the functions, so the gateway counts them (each one named a version, so
it was answered 200). Every round is kept in `Release.probes` ({"at", "canary", "stable"}: probes
answered per variant, for as long as a window lasts) and the analysis subtracts the ones inside its
range: the controller's own calls are never evidence, and they never make up a minimum sample.

Times come from the step's clock (state.clock_from): a window restarted after a redeploy starts
once the redeploy has returned and the new replicas answer with the right version.

Owns: `Observation`, `observe`, `reconcile`, `probes_between`, PROBES. Must not touch: the decision (checks.py), the
lease (the caller holds it and passes its check as `fence`), service clients (ports only).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from movierec.canary import CANARY, STABLE
from movierec.errors import one_line
from movierec.ports import ReleaseDeployer
from movierec.registry import ModelNotFoundError, Registry, iso
from movierec.release.config import ReleaseConfig
from movierec.release.state import Clock, Release

KEEP_PROBES_S = 600  # probe rounds are kept this long past a window's length
PROBES = 2  # health probes per variant and round: with round-robin replicas, more than one is asked


@dataclass(frozen=True)
class Observation:
    """One variant as this step found it."""

    variant: str
    function: str
    expected: str  # the version the release record says it serves
    deployed: str  # its MODEL_VERSION as deployed ("" when unset)
    resolved: str | None  # `deployed` through the registry (None: it names no registered model)
    served: tuple[str, ...]  # the distinct versions the probes were answered with
    unknown: str | None  # why a probe could not tell, if one could not
    answered: int = 0  # probes that named a version: calls the gateway counted as 200s

    @property
    def deployed_ok(self) -> bool:
        return self.resolved == self.expected

    @property
    def drifted(self) -> bool:
        """Deployed with, or answering with, another version than the release's."""
        return not self.deployed_ok or any(v != self.expected for v in self.served)

    @property
    def verified(self) -> bool:
        return not self.drifted and self.unknown is None and self.served == (self.expected,)

    def as_event(self) -> dict[str, object]:
        return {"function": self.function, "deployed": self.deployed, "resolved": self.resolved,
                "served": list(self.served), "expected": self.expected,
                **({"unknown": self.unknown} if self.unknown else {})}


def _resolve(registry: Registry, spec: str) -> str | None:
    if not spec:
        return None
    try:
        return registry.resolve(spec)
    except ModelNotFoundError:
        return None


def _probe(deployer: ReleaseDeployer, function: str) -> tuple[tuple[str, ...], str | None, int]:
    served: list[str] = []
    unknown, answered = None, 0
    for _ in range(PROBES):
        try:
            version = deployer.served_version(function)
        except Exception as e:  # noqa: BLE001 (a probe that cannot tell is "unknown", never a failed step)
            unknown = one_line(e)
            continue
        if version is None:
            unknown = "its health names no model"
            continue
        answered += 1
        if version not in served:
            served.append(version)
    return tuple(served), unknown, answered


def observe(config: ReleaseConfig, registry: Registry, deployer: ReleaseDeployer, release: Release,
            clock: Clock | None = None) -> dict[str, Observation]:
    """Both variants: deployed MODEL_VERSION (a gateway error propagates: nothing is known) and
    the versions their replicas answer with; with `clock`, the probes are kept in `release.probes`."""
    found = {}
    for variant, function, expected in ((CANARY, config.canary_function, release.candidate),
                                        (STABLE, config.stable_function, release.stable)):
        deployed = str(deployer.env_of(function).get("MODEL_VERSION") or "").strip()
        served, unknown, answered = _probe(deployer, function)
        found[variant] = Observation(variant, function, expected, deployed, _resolve(registry, deployed),
                                     served, unknown, answered)
    if clock is not None:
        now = clock()
        keep_after = now - timedelta(seconds=config.window_s + KEEP_PROBES_S)
        release.probes = [p for p in release.probes if datetime.fromisoformat(p["at"]) > keep_after]
        release.probes.append({"at": probe_time(now), **{v: o.answered for v, o in found.items()}})
    return found


def probe_time(at: datetime) -> str:
    """Probe times to the millisecond: the analysis compares them with its range's start."""
    return at.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def probes_between(release: Release, start: datetime, end: datetime) -> dict[str, int]:
    """Probes answered per variant in (start, end]: the controller's own calls in a range."""
    sent = {CANARY: 0, STABLE: 0}
    for entry in release.probes:
        if start < datetime.fromisoformat(entry["at"]) <= end:
            for variant in sent:
                sent[variant] += int(entry.get(variant, 0))
    return sent


def reconcile(config: ReleaseConfig, registry: Registry, deployer: ReleaseDeployer, release: Release,
              clock: Clock, fence: Callable[[], None]) -> bool:
    """Check both variants against the release record, re-apply drift, restart the window;
    True when both are verified serving their versions now (the window runs from
    `release.serving_since`). Changes only `release` (events, serving_since, verified_at) and
    the deployments; the caller saves the record."""
    seen = observe(config, registry, deployer, release, clock)
    drifted = [o for o in seen.values() if o.drifted]
    if drifted:
        for o in drifted:
            release.add_event(clock(), "drift_seen", **o.as_event())
        for o in drifted:
            fence()
            deployer.update_env(o.function, {"MODEL_VERSION": o.expected})
            release.add_event(clock(), "reapplied", function=o.function, version=o.expected)
        release.add_event(clock(), "window_restarted", evidence_from=release.serving_since,
                          reason="drift: " + "; ".join(f"{o.function} {_what(o)}" for o in drifted))
        release.serving_since = None
        seen = observe(config, registry, deployer, release, clock)  # the redeploy returned: what now?
    if all(o.verified for o in seen.values()):
        now = clock()
        release.verified_at = iso(now)
        if release.serving_since is None:
            release.serving_since = iso(now)
            release.add_event(now, "serving_verified", canary=release.candidate, stable=release.stable)
        return True
    if not release.events or release.events[-1]["event"] != "unverified":
        pending = [o.as_event() for o in seen.values() if not o.verified]
        release.add_event(clock(), "unverified", variants=pending)
    return False


def _what(o: Observation) -> str:
    deployed = f"deployed with MODEL_VERSION={o.deployed or '(unset)'}"
    if o.resolved and o.resolved != o.deployed:
        deployed += f" ({o.resolved})"
    answering = f", answering {'/'.join(o.served)}" if o.served else ""
    return f"{deployed}{answering}, expected {o.expected}"
