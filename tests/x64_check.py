"""Library vs reference in float64 (run as a subprocess by test_comet_reference.py).

In float32 the two agree to float32 rounding (~1e-6); in float64 any remaining
difference would be a real one. Prints one JSON line: worst loss and gradient errors."""

import json
import sys
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)

import dataclasses  # noqa: E402

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

sys.path[:0] = [str(Path(__file__).parent), str(Path(__file__).parent.parent)]
import reference_comet as rc  # noqa: E402

rc.DTYPE = jnp.float64
rc.GLOBAL_NORM_EPS = float(np.finfo(np.float64).eps)  # machine epsilon of the compute dtype

import test_comet_reference as t  # noqa: E402
from comet_jax import layout  # noqa: E402
from comet_jax.model import comet as cm  # noqa: E402
from numerics import rel_err  # noqa: E402


def main() -> None:
    model = dataclasses.replace(t.MODEL, dtype="float64", param_dtype="float64")
    worst = {"loss": 0.0, "grad": 0.0}
    for name in sys.argv[1:] or sorted(t.CASES):
        comet, lengths, planner = t.CASES[name]
        seqs, plans = t.case_data(comet, lengths, planner)
        params = jax.tree.map(lambda x: x.astype(jnp.float64), t.perturbed_params(t.MODEL, comet, 0))
        cfg, ccfg = t.ref_cfgs(model, comet)
        l1, g1 = jax.value_and_grad(cm.loss)(params, layout.build(seqs, plans, comet).as_dict(), model, comet)
        # jit: one compile of the unrolled reference instead of one per eagerly run op (half
        # the time); the reference's arithmetic is the same, and float64 leaves no rounding to hide in
        ref = jax.jit(jax.value_and_grad(lambda p: rc.reference_loss(p, cfg, ccfg, [s.tolist() for s in seqs], plans)))
        l2, g2 = ref(params)
        assert l1.dtype == l2.dtype == jnp.float64
        worst["loss"] = max(worst["loss"], rel_err(l1, l2))
        worst["grad"] = max(worst["grad"], max(jax.tree.leaves(jax.tree.map(rel_err, g1, g2))))
    print(json.dumps(worst))


if __name__ == "__main__":
    main()
