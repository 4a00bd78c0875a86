"""BIM (Kurakin et al. 2016): iterated FGSM / FGM steps projected into the eps-ball, no random start."""

from __future__ import annotations

import foolbox as fb

from harness.attacks.base import Attack


class BIM(Attack):
    name = "bim"
    label = "BIM"
    norms = ("linf", "l2")
    kind = "bounded"
    uses = "gradient"
    cost = 10  # one gradient step per iteration (FGM = 1), at the default 10 steps:
    cost_reference = {"steps": 10}  # so `bench sweep --dry-run` prices a suite's 40 steps at 40
    library = "foolbox"
    description = "Basic iterative method (Kurakin et al. 2016): iterated gradient steps, no random start (example plugin)"
    default_params = {"steps": 10}

    def configure(self, norm, params):
        unknown = set(params) - {"steps", "rel_stepsize"}
        if unknown:
            from harness.errors import BenchUserError

            raise BenchUserError(f"bim: unknown parameter(s) {', '.join(sorted(unknown))}; known: steps, rel_stepsize")
        steps = int(params.get("steps", 10))
        cls = fb.attacks.LinfBasicIterativeAttack if norm == "linf" else fb.attacks.L2BasicIterativeAttack
        return cls(steps=steps, rel_stepsize=float(params.get("rel_stepsize", 2.5 / steps)))

    def propose(self, config, model, x, y, *, threat, seed, defense, report):
        fmodel = fb.PyTorchModel(model, bounds=threat.bounds, device=x.device)
        raw, _clipped, _success = config(fmodel, x, y, epsilons=threat.eps)
        return raw

    def budget_params(self, params, restarts):
        return f"{params.get('steps', 10)} steps x {restarts} restarts"
