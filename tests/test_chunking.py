"""Chunk planners (docs/design.md §1.2 item 2): every plan is valid, known outputs, mixtures."""

import numpy as np
import pytest

from comet_jax import chunking as ch
from comet_jax.chunking import (PLANNERS, PlannerMix, fixed, plan_by_name, random_sizes, right_aligned,
                                semantic, uniform, validate_plan)

NL, DOT = 10, 11  # boundary ids used in the tests


def _cases():
    """(n, C) pairs: random ones plus edge cases n < C, n == C, n % C == 0, C == 1, n == 1."""
    rng = np.random.default_rng(0)
    cases = [(1, 1), (1, 5), (5, 1), (7, 7), (3, 8), (16, 4), (17, 4), (64, 64), (128, 64), (4, 3)]
    cases += [(int(rng.integers(1, 300)), int(rng.integers(1, 40))) for _ in range(200)]
    return cases


CASES = _cases()


def _tokens(n, seed):
    """Random ids in [0, 20) with some NL / DOT boundaries."""
    return np.random.default_rng(seed).integers(0, 20, size=n)


def _assert_python_ints(plan):
    assert isinstance(plan, list)
    assert all(type(s) is int for s in plan), plan


@pytest.mark.parametrize("name", PLANNERS)
def test_every_plan_is_valid(name):
    rng = np.random.default_rng(1)
    for i, (n, C) in enumerate(CASES):
        for min_size in (1, 4, 100):
            plan = plan_by_name(name, _tokens(n, i), C, rng, min_size=min_size, boundary_ids=(NL, DOT))
            validate_plan(plan, n, C)
            _assert_python_ints(plan)


def test_fixed_and_right_aligned_examples():
    assert fixed(10, 4) == [4, 4, 2]
    assert right_aligned(10, 4) == [2, 4, 4]
    assert fixed(8, 4) == right_aligned(8, 4) == [4, 4]
    assert fixed(3, 8) == right_aligned(3, 8) == [3]
    assert fixed(5, 1) == right_aligned(5, 1) == [1] * 5
    assert fixed(1, 1) == [1]
    for n, C in CASES:
        if n % C == 0:
            assert fixed(n, C) == right_aligned(n, C)
        assert right_aligned(n, C) == fixed(n, C)[::-1]
        assert right_aligned(n, C)[-1] == min(n, C)


def test_semantic_examples():
    #        0  1  2   3  4  5  6    7  8  9
    toks = [1, 2, NL, 3, 4, 5, DOT, 6, 7, 8]
    # window [0,4): last boundary at 2 -> 3; window [3,7): boundary at 6 -> 4; rest 3 fits.
    assert semantic(toks, 4, (NL, DOT)) == [3, 4, 3]
    # last boundary within the window wins, not the first one
    assert semantic([NL, NL, 1, NL, 2, 3, 4], 5, (NL,)) == [4, 3]
    # no boundary in the window -> cut at C
    assert semantic([1, 2, 3, 4, 5, 6, 7], 3, (NL,)) == [3, 3, 1]
    assert semantic([1, 2, 3, 4, 5, NL, 7], 3, (NL,)) == [3, 3, 1]
    # boundary as the C-th token -> full chunk
    assert semantic([1, 2, NL, 4, 5, NL, 7], 3, (NL,)) == [3, 3, 1]
    # boundary ids absent / empty -> identical to fixed
    assert semantic(toks, 3, ()) == fixed(10, 3)
    assert semantic(toks, 3, (99,)) == fixed(10, 3)
    # remainder that fits in one chunk stays whole
    assert semantic([1, NL, 2], 8, (NL,)) == [3]
    assert semantic([NL] * 5, 2, (NL,)) == [2, 2, 1]
    # numpy input works, and C == 1
    assert semantic(np.array(toks), 1, (NL,)) == [1] * 10


def test_semantic_chunks_end_at_boundaries():
    for i, (n, C) in enumerate(CASES):
        toks = _tokens(n, i)
        plan = semantic(toks, C, (NL, DOT))
        ends = np.cumsum(plan)
        start = 0
        for size, end in zip(plan[:-1], ends[:-1]):
            window = toks[start:start + C]
            has_boundary = np.isin(window, (NL, DOT))
            if has_boundary.any():
                assert toks[end - 1] in (NL, DOT)
                assert size == int(np.flatnonzero(has_boundary)[-1]) + 1
            else:
                assert size == C
            start = end


def test_uniform_uses_one_size():
    for i, (n, C) in enumerate(CASES):
        c = int(np.random.default_rng(i).integers(min(4, C), C + 1))  # the size uniform draws
        plan = uniform(n, C, np.random.default_rng(i), min_size=4)
        assert plan == fixed(n, c)
        assert set(plan[:-1]) <= {c} and plan[-1] <= c
    rng = np.random.default_rng(2)
    sizes = {uniform(1000, 16, rng)[0] for _ in range(300)}
    assert sizes == set(range(4, 17))  # every size in [min_size, C] is drawn


def test_random_sizes_respect_min_size():
    rng = np.random.default_rng(3)
    for n, C in CASES:
        for min_size in (1, 4, 7):
            plan = random_sizes(n, C, rng, min_size=min_size)
            lo = min(min_size, C)
            assert all(lo <= s <= C for s in plan[:-1]), (n, C, plan)
            assert 1 <= plan[-1] <= C
    drawn = [s for _ in range(100) for s in random_sizes(500, 12, rng)[:-1]]
    assert set(drawn) == set(range(4, 13))
    # sizes within a plan vary (not a single size like uniform)
    assert len(set(random_sizes(500, 12, rng)[:-1])) > 1


def test_random_planners_are_deterministic_given_seed():
    for fn in (uniform, random_sizes):
        a = fn(300, 17, np.random.default_rng(7))
        b = fn(300, 17, np.random.default_rng(7))
        assert a == b


def test_random_planners_need_rng():
    with pytest.raises(ValueError, match="Generator"):
        uniform(10, 4, None)
    with pytest.raises(ValueError, match="Generator"):
        plan_by_name("random", 10, 4)


def test_validate_plan_rejects_bad_plans():
    validate_plan([4, 4, 2], 10, 4)
    validate_plan([np.int64(3)], 3, 3)
    with pytest.raises(ValueError, match="sums to 9"):
        validate_plan([4, 4, 1], 10, 4)
    with pytest.raises(ValueError, match=r"plan\[1\] = 5"):
        validate_plan([4, 5, 1], 10, 4)
    with pytest.raises(ValueError, match=r"plan\[2\] = 0"):
        validate_plan([5, 5, 0], 10, 5)
    with pytest.raises(ValueError, match="empty"):
        validate_plan([], 3, 4)
    with pytest.raises(ValueError, match="not an integer"):
        validate_plan([2.0, 1], 3, 4)
    with pytest.raises(ValueError, match="not an integer"):
        validate_plan([True, 2], 3, 4)
    with pytest.raises(ValueError, match="list"):
        validate_plan(3, 3, 4)


def test_bad_arguments():
    with pytest.raises(ValueError, match="n must be >= 1"):
        fixed(0, 4)
    with pytest.raises(ValueError, match="C must be >= 1"):
        right_aligned(4, 0)
    with pytest.raises(ValueError, match="min_size"):
        random_sizes(10, 4, np.random.default_rng(0), min_size=0)
    with pytest.raises(ValueError, match="unknown planner 'chunky'"):
        plan_by_name("chunky", 10, 4)
    with pytest.raises(ValueError, match="token ids"):
        plan_by_name("semantic", 10, 4, boundary_ids=(NL,))


def test_plan_by_name_matches_functions():
    toks = _tokens(50, 0)
    assert plan_by_name("fixed", toks, 7) == fixed(50, 7)
    assert plan_by_name("fixed", 50, 7) == fixed(50, 7)
    assert plan_by_name("right_aligned", toks, 7) == right_aligned(50, 7)
    assert plan_by_name("semantic", toks, 7, boundary_ids=(NL,)) == semantic(toks, 7, (NL,))
    assert plan_by_name("uniform", toks, 7, np.random.default_rng(5), min_size=2) == \
        uniform(50, 7, np.random.default_rng(5), min_size=2)
    assert plan_by_name("random", toks, 7, np.random.default_rng(5), min_size=2) == \
        random_sizes(50, 7, np.random.default_rng(5), min_size=2)


def test_planner_mix_default_is_fixed():
    mix = PlannerMix()
    assert dict(mix.weights) == {"fixed": 1.0}
    assert mix.plan(_tokens(10, 0), 4, np.random.default_rng(0)) == [4, 4, 2]
    assert mix.plan(10, 4, None) == [4, 4, 2]  # single planner needs no randomness


def test_planner_mix_picks_by_weight():
    weights = {"fixed": 1.0, "right_aligned": 2.0, "uniform": 3.0, "random": 4.0, "semantic": 0.0}
    mix = PlannerMix(weights=weights, boundary_ids=(NL,))
    rng = np.random.default_rng(4)
    draws = 20000
    counts = {name: 0 for name in PLANNERS}
    for _ in range(draws):
        counts[mix.choose(rng)] += 1
    assert counts["semantic"] == 0
    for name, w in weights.items():
        expected = w / sum(weights.values())
        assert abs(counts[name] / draws - expected) < 0.015, (name, counts)


def test_planner_mix_plans_are_valid_and_use_all_planners():
    mix = PlannerMix(weights={name: 1.0 for name in PLANNERS}, boundary_ids=(NL, DOT), min_size=3)
    rng = np.random.default_rng(5)
    for i, (n, C) in enumerate(CASES):
        validate_plan(mix.plan(_tokens(n, i), C, rng), n, C)
    # the planner drawn by `choose` is the one applied (same rng stream)
    toks = _tokens(200, 9)
    for seed in range(30):
        r1, r2 = np.random.default_rng(seed), np.random.default_rng(seed)
        name = mix.choose(r1)
        assert mix.plan(toks, 9, r2) == plan_by_name(name, toks, 9, r1, min_size=3, boundary_ids=(NL, DOT))


def test_planner_mix_rejects_bad_configs():
    with pytest.raises(ValueError, match="unknown planner 'fixd'"):
        PlannerMix(weights={"fixd": 1.0})
    with pytest.raises(ValueError, match=r"weights\['uniform'\] must be >= 0"):
        PlannerMix(weights={"fixed": 1.0, "uniform": -0.5})
    with pytest.raises(ValueError, match="all planner weights are zero"):
        PlannerMix(weights={"fixed": 0.0, "random": 0})
    with pytest.raises(ValueError, match="all planner weights are zero"):
        PlannerMix(weights={})
    with pytest.raises(ValueError, match=r"weights\['semantic'\] > 0 but boundary_ids is empty"):
        PlannerMix(weights={"semantic": 1.0})
    with pytest.raises(ValueError, match=r"weights\['fixed'\] must be a finite number"):
        PlannerMix(weights={"fixed": float("nan")})
    with pytest.raises(ValueError, match="min_size"):
        PlannerMix(min_size=0)
    with pytest.raises(ValueError, match="boundary_ids"):
        PlannerMix(boundary_ids=("\n",))
    # semantic with weight 0 needs no boundary ids
    PlannerMix(weights={"fixed": 1.0, "semantic": 0.0})


def test_planner_mix_is_frozen_and_hashable():
    weights = {"fixed": 1.0, "random": 1.0}
    mix = PlannerMix(weights=weights, boundary_ids=[NL])
    with pytest.raises(Exception):
        mix.min_size = 5
    with pytest.raises(TypeError):
        mix.weights["fixed"] = 2.0
    weights["fixed"] = 5.0  # the caller's dict is copied
    assert mix.weights["fixed"] == 1.0
    assert mix.boundary_ids == (NL,)
    same = PlannerMix(weights={"random": 1, "fixed": 1}, boundary_ids=(NL,))
    assert mix == same and hash(mix) == hash(same)


def test_module_imports_only_numpy_and_stdlib():
    """chunking stays light: numpy and the standard library, plus comet_jax.config (where the
    planner names are defined), which itself imports only the standard library."""
    import ast
    import sys

    from comet_jax import config

    def imports(path):
        roots = set()
        for node in ast.walk(ast.parse(open(path).read())):
            if isinstance(node, ast.Import):
                roots |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                roots.add(node.module)
        return roots

    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    roots = imports(ch.__file__)
    assert {r.split(".")[0] for r in roots - {"numpy", "comet_jax.config"}} <= stdlib, roots
    assert {r.split(".")[0] for r in imports(config.__file__)} <= stdlib
