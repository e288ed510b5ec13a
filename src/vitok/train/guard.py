"""Stage 2's safety net: the reconstruction guard and the rule that picks the exported checkpoint.

Stage 2 trades some PSNR for realism, but a GAN can also quietly wreck a converged decoder (a
c=128 S-B/16 lost 4.4 dB in 300 steps). The guard compares each stage-2 held-out evaluation
with the one taken at the end of stage 1 (the reference):

- a breach is held-out PSNR more than `guard.margin_db` below the reference (or not finite);
- on a breach, `backoff` multiplies lambda and the stage-2 learning rate by
  `guard.backoff_factor` (at most `guard.max_backoffs` times; the next breach stops stage 2),
  `stop` ends stage 2 at once, `warn` only logs it. Every breach is logged and reported.

Selection (what `model/` holds at the end, and checkpoints/best.json):

- without a reference (stage 1 only, or stage 2 not reached): the evaluation with the highest
  PSNR;
- with a reference: among the reference and the stage-2 evaluations within the margin, the best
  by `guard.select`: lowest SWD (default), sharpness ratio closest to 1 (|log ratio| smallest),
  or highest PSNR; ties go to the later step. Candidates missing that metric are ranked by PSNR
  instead, and the selection says so. PSNR alone would always pick the reference, since stage 2
  never raises it; SWD (patch statistics against the originals) is what stage 2 should improve.

Only evaluations taken at a step that also wrote a checkpoint are recorded, so whatever is
selected can be exported. The state travels in the training checkpoint, so a resumed run
makes the same decisions.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from .config import GuardSection


@dataclass
class GuardState:
    """What the guard has seen and done; saved with every checkpoint."""

    reference: dict | None = None  # {"step", "metrics"} at the end of stage 1
    evaluations: list[dict] = field(default_factory=list)  # {"step", "stage", "metrics"}, checkpointed steps only
    events: list[dict] = field(default_factory=list)  # one per breach: what happened and what was done
    gan_scale: float = 1.0  # multiplies lambda (backoffs)
    lr_scale: float = 1.0  # multiplies the stage-2 learning rate (backoffs)
    backoffs: int = 0


class Guard:
    """Applies the rules above; the training loop calls `set_reference`, `observe` and `select`."""

    def __init__(self, config: GuardSection) -> None:
        self.config = config
        self.state = GuardState()

    # ---- recording ----------------------------------------------------------------------------

    def set_reference(self, step: int, metrics: dict, label: str = "the end of stage 1") -> None:
        """The evaluation every stage-2 evaluation is compared with: the end of stage 1, or the initial
        model of a run without stage 1 (label names it in every message)."""
        self.state.reference = {"step": step, "metrics": dict(metrics), "label": label}
        self.record(step, 1, metrics)

    @property
    def reference_label(self) -> str:
        """What the reference is, for messages ("the end of stage 1", "the initial model")."""
        return (self.state.reference or {}).get("label", "the end of stage 1")

    def record(self, step: int, stage: int, metrics: dict) -> None:
        """Keep an evaluation as a selection candidate (its step must have a checkpoint)."""
        entry = {"step": step, "stage": stage, "metrics": dict(metrics)}
        self.state.evaluations = [e for e in self.state.evaluations if e["step"] != step] + [entry]

    def observe(self, step: int, metrics: dict, final: bool = False) -> tuple[str | None, str | None]:
        """Check a stage-2 evaluation against the reference; returns (message, "stop" or None).

        The evaluation is recorded as a candidate either way; a message comes back only on a breach.
        `final`: the run's last evaluation, after training ended: a breach is recorded, nothing acted on.
        """
        self.record(step, 2, metrics)
        ref = self.reference_psnr()
        if ref is None:
            return None, None
        psnr = metrics.get("psnr", math.nan)
        drop = ref - psnr
        if math.isfinite(psnr) and drop <= self.config.margin_db:
            return None, None
        c, s = self.config, self.state
        what = (f"held-out PSNR {psnr:.2f} dB at step {step} is {drop:.2f} dB below {self.reference_label} "
                f"({ref:.2f} dB), beyond guard.margin_db={c.margin_db}")
        decision = None
        if final:
            action = "none: training had ended (the selection keeps to checkpoints within the margin)"
        elif c.action == "warn":
            action = "none (guard.action=warn)"
        elif c.action == "backoff" and s.backoffs < c.max_backoffs:
            s.backoffs += 1
            s.gan_scale *= c.backoff_factor
            s.lr_scale *= c.backoff_factor
            action = (f"backoff {s.backoffs}/{c.max_backoffs}: lambda and the stage-2 lr now x{s.gan_scale:.3g} "
                      f"of their schedule")
        else:
            decision = "stop"
            action = ("stop stage 2 (guard.action=stop)" if c.action == "stop"
                      else f"stop stage 2 (still beyond the margin after {c.max_backoffs} backoffs)")
        s.events.append({"step": step, "psnr": psnr, "reference_psnr": ref, "drop_db": drop, "action": action})
        return f"guard: {what}; action: {action}", decision

    def reference_psnr(self) -> float | None:
        ref = self.state.reference
        value = None if ref is None else ref["metrics"].get("psnr")
        return value if value is not None and math.isfinite(value) else None

    # ---- selection ----------------------------------------------------------------------------

    def select(self, available: set[int] | None = None) -> dict | None:
        """The evaluation whose checkpoint should be exported, with the rule that chose it; None if none.

        `available` limits the candidates to steps whose checkpoint still exists.
        """
        evals = [e for e in self.state.evaluations if available is None or e["step"] in available]
        evals = [e for e in evals if _finite(e["metrics"].get("psnr"))]
        if not evals:
            return None
        ref = self.reference_psnr()
        if ref is None:
            best = max(evals, key=lambda e: (e["metrics"]["psnr"], e["step"]))
            return _choice(best, "psnr", "highest held-out PSNR (no stage-2 reference)")
        start = self.state.reference["step"]
        floor = ref - self.config.margin_db
        candidates = [e for e in evals if e["step"] >= start and e["metrics"]["psnr"] >= floor]
        if not candidates:  # the reference's own checkpoint was pruned or never written
            best = max(evals, key=lambda e: (e["metrics"]["psnr"], e["step"]))
            return _choice(best, "psnr", f"no checkpoint within guard.margin_db={self.config.margin_db} of "
                                         f"{self.reference_label} ({ref:.2f} dB) remains: highest held-out PSNR")
        metric = self.config.select
        # A sharpness ratio of 0 (a flat reconstruction) has no log: it cannot be the closest to 1.
        scored = [e for e in candidates if _finite(e["metrics"].get(metric))
                  and (metric != "sharpness" or e["metrics"][metric] > 0)]
        within = f"within {self.config.margin_db} dB of {self.reference_label} ({ref:.2f} dB)"
        if metric == "psnr" or not scored:
            best = max(candidates, key=lambda e: (e["metrics"]["psnr"], e["step"]))
            reason = f"highest held-out PSNR {within}"
            if metric != "psnr":
                reason += f" (no candidate has {metric}, guard.select's metric)"
            return _choice(best, "psnr", reason)
        if metric == "swd":
            best = min(scored, key=lambda e: (e["metrics"]["swd"], -e["step"]))
            reason = f"lowest SWD among the {len(candidates)} evaluation(s) {within}"
        else:
            best = min(scored, key=lambda e: (abs(math.log(e["metrics"]["sharpness"])), -e["step"]))
            reason = f"sharpness ratio closest to 1 among the {len(candidates)} evaluation(s) {within}"
        if len(scored) < len(candidates):
            reason += f" ({len(candidates) - len(scored)} without {metric} left out)"
        return _choice(best, metric, reason)

    # ---- checkpointing ------------------------------------------------------------------------

    def state_dict(self) -> dict:
        return asdict(self.state)

    def load_state_dict(self, state: dict) -> None:
        self.state = GuardState(**state)


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _choice(evaluation: dict, metric: str, reason: str) -> dict:
    value = evaluation["metrics"][metric]
    return {"step": evaluation["step"], "stage": evaluation["stage"], "metric": metric, "value": value,
            "reason": reason, "metrics": evaluation["metrics"]}
