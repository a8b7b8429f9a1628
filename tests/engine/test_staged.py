"""Staged levels (docs/math.md, section 4): order independence, exact errors, locality, partition, schedule."""

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import mmf_stream as ms
from mmf_stream.engine.greedy import is_decoupled
from mmf_stream.engine.staged import partition

from matrix_helpers import planted_blocks, random_symmetric, run_under_each_openblas_core
from matrix_helpers import check_valid as _check_valid

#: options that make staged runs happen on small matrices
SMALL_STAGES = dict(cluster_size=32, greedy_below=40)


def _recording_map(order: str, seed: int = 0):
    """A ``map_clusters`` that runs the tasks in another order and returns results in the tasks' order.

    Records how many tasks each stage had (to prove that stages with several
    clusters ran).
    """
    stages = []

    def run(function, tasks):
        tasks = list(tasks)
        stages.append(len(tasks))
        if order == "reversed":
            schedule = list(range(len(tasks)))[::-1]
        elif order == "shuffled":
            schedule = np.random.default_rng(seed).permutation(len(tasks)).tolist()
        else:
            schedule = list(range(len(tasks)))
        results = [None] * len(tasks)
        for i in schedule:
            results[i] = function(tasks[i])
        return results

    return run, stages


def _threads(function, tasks):
    with ThreadPoolExecutor(max_workers=3) as pool:
        return list(pool.map(function, list(tasks)))


def _assert_bitwise_equal(a, b):
    np.testing.assert_array_equal(a.tuples, b.tuples)
    np.testing.assert_array_equal(a.wavelets, b.wavelets)
    np.testing.assert_array_equal(a.rotations, b.rotations)  # bitwise, not allclose
    np.testing.assert_array_equal(a.level_errors, b.level_errors)
    np.testing.assert_array_equal(a.diagonal, b.diagonal)
    np.testing.assert_array_equal(a.core, b.core)
    np.testing.assert_array_equal(a.core_block, b.core_block)
    assert a.error == b.error


def _squared_norm_identity(f, C):
    """||C - M(C)||^2 = ||C||^2 - ||H||^2 (rotations preserve the norm; H keeps entries of C_L)."""
    H = f.compressed()
    expected = np.linalg.norm(C) ** 2 - np.linalg.norm(H) ** 2
    assert f.error**2 == pytest.approx(expected, rel=1e-7, abs=1e-9 * np.linalg.norm(C) ** 2)


# ------------------------------------------------------- order independence


@pytest.mark.parametrize("order_name", ["reversed", "shuffled"])
def test_staged_dense_result_does_not_depend_on_cluster_order(order_name):
    C = ms.hierarchical_covariance(300, seed=1)
    in_turn, turn_stages = _recording_map("in turn")
    other, other_stages = _recording_map(order_name, seed=5)
    a = ms.factorize(C, order=4, core_size=20, schedule="staged", options=SMALL_STAGES, map_clusters=in_turn)
    b = ms.factorize(C, order=4, core_size=20, schedule="staged", options=SMALL_STAGES, map_clusters=other)
    default = ms.factorize(C, order=4, core_size=20, schedule="staged", options=SMALL_STAGES)
    assert turn_stages == other_stages and max(turn_stages) >= 4  # several clusters a stage
    _assert_bitwise_equal(a, b)
    _assert_bitwise_equal(a, default)


@pytest.mark.parametrize("order_name", ["reversed", "shuffled"])
def test_staged_factored_result_does_not_depend_on_cluster_order(order_name):
    M = ms.class_means(300, 24, seed=2)
    in_turn, turn_stages = _recording_map("in turn")
    other, _ = _recording_map(order_name, seed=9)
    a = ms.factorize(means=M, order=5, core_size=30, schedule="staged", options=SMALL_STAGES, map_clusters=in_turn)
    b = ms.factorize(means=M, order=5, core_size=30, schedule="staged", options=SMALL_STAGES, map_clusters=other)
    assert max(turn_stages) >= 4
    _assert_bitwise_equal(a, b)


def test_staged_result_is_the_same_in_threads():
    C = random_symmetric(200, seed=4, rank=30)
    a = ms.factorize(C, order=3, core_size=10, schedule="staged", options=SMALL_STAGES)
    b = ms.factorize(C, order=3, core_size=10, schedule="staged", options=SMALL_STAGES, map_clusters=_threads)
    _assert_bitwise_equal(a, b)


def test_staged_is_deterministic_for_a_seed_and_seed_matters():
    C = ms.hierarchical_covariance(200, seed=3)
    a = ms.factorize(C, order=4, core_size=10, seed=7, schedule="staged", options=SMALL_STAGES)
    b = ms.factorize(C.copy(), order=4, core_size=10, seed=7, schedule="staged", options=SMALL_STAGES)
    _assert_bitwise_equal(a, b)
    c = ms.factorize(C, order=4, core_size=10, seed=8, schedule="staged", options=SMALL_STAGES)
    assert not np.array_equal(a.tuples, c.tuples)


# ---------------------------------------------------------------- exactness


@pytest.mark.parametrize("seed,order,core", [(0, 3, 2), (1, 4, 15), (2, 5, 30), (3, 2, 40)])
def test_staged_dense_error_equals_reconstruction(seed, order, core):
    C = random_symmetric(160, seed=seed, rank=40) + np.diag(np.random.default_rng(seed).uniform(0, 0.1, 160))
    run, stages = _recording_map("in turn")
    f = ms.factorize(C, order=order, core_size=core, schedule="staged", options=SMALL_STAGES, map_clusters=run)
    assert f.metadata["schedule"] == "staged" and len(stages) >= 2 and max(stages) >= 4
    assert f.n_levels == 160 - core and f.core.shape == (core,)
    _check_valid(f, C)
    _squared_norm_identity(f, C)


@pytest.mark.parametrize("seed,order,core", [(0, 3, 2), (1, 4, 15), (2, 5, 30)])
def test_staged_factored_error_equals_reconstruction(seed, order, core):
    M = ms.class_means(160, 20, seed=seed)
    C = M @ M.T
    run, stages = _recording_map("in turn")
    f = ms.factorize(means=M, order=order, core_size=core, schedule="staged", options=SMALL_STAGES, map_clusters=run)
    assert f.metadata["schedule"] == "staged" and max(stages) >= 4
    _check_valid(f, C)
    _squared_norm_identity(f, C)
    assert f.norm == pytest.approx(np.linalg.norm(C), rel=1e-12)


def test_staged_indefinite_matrix_error_equals_reconstruction():
    rng = np.random.default_rng(11)
    X = rng.normal(size=(150, 150))
    C = X + X.T
    f = ms.factorize(C, order=4, core_size=12, schedule="staged", options=SMALL_STAGES)
    _check_valid(f, C)
    _squared_norm_identity(f, C)


def test_staged_level_errors_are_the_exact_row_energies():
    """Each level's error is 2 r_l^2 from the final compression (docs/math.md, section 4)."""
    C = ms.hierarchical_covariance(180, seed=5)
    f = ms.factorize(C, order=4, core_size=20, schedule="staged", options=SMALL_STAGES)
    final = f.transform(f.transform(C).T).T  # C_L = Q C Q'
    active = np.ones(f.size, dtype=bool)
    for level in f.levels:
        s = level.wavelet
        active[s] = False
        expected = 2.0 * np.sum(final[s, active] ** 2)
        assert level.squared_error == pytest.approx(expected, rel=1e-6, abs=1e-10 * np.linalg.norm(C) ** 2)


# ------------------------------------------------------------ planted blocks


def _planted_means(blocks: int, size: int, width: int, seed: int):
    """Class means whose Gram is block diagonal: each block lives in its own features."""
    rng = np.random.default_rng(seed)
    M = np.zeros((blocks * size, blocks * width))
    membership = np.repeat(np.arange(blocks), size)
    for b in range(blocks):
        M[b * size : (b + 1) * size, b * width : (b + 1) * width] = (
            rng.normal(size=(size, width)) + rng.normal(size=(1, width))
        )
    order = rng.permutation(blocks * size)
    return M[order], membership[order]


def _planted(kind, blocks, size, seed):
    if kind == "dense":
        C, membership = planted_blocks(blocks=blocks, block_size=size, seed=seed)
        return C, {}, membership
    M, membership = _planted_means(blocks, size, 2 * size, seed)
    return None, {"means": M}, membership


def _rotations_stay_inside_blocks(f, membership):
    for level in f.levels:
        for row in level.rotation:
            support = membership[level.indices][np.abs(row) > 1e-8]
            assert len(set(support.tolist())) == 1, f"level {level.number}: a rotation row mixes blocks"


@pytest.mark.parametrize("kind", ["dense", "factored"])
@pytest.mark.parametrize("seed", [0, 1])
def test_staged_planted_two_blocks_levels_stay_inside_blocks(kind, seed):
    """Two blocks of 60, clusters of 32: no rotation mixes the blocks, and tuples that span
    both (the levels that finish a block, as in greedy runs) cost next to nothing.

    Which nearly-decoupled row fills the last tuples of a block is decided at rounding
    level (a bystander of the other block, or a fourth row of the same block whose
    coupling is ~1e-9): the test asserts what does not depend on it."""
    C, kwargs, membership = _planted(kind, 2, 60, seed)
    run, stages = _recording_map("in turn")
    f = ms.factorize(C, order=4, core_size=12, schedule="staged", options=dict(cluster_size=32, greedy_below=30),
                     map_clusters=run, **kwargs)
    assert max(stages) == 4
    full = C if C is not None else kwargs["means"] @ kwargs["means"].T
    _check_valid(f, full)
    _rotations_stay_inside_blocks(f, membership)
    mixed = [level.squared_error for level in f.levels if len(set(membership[level.indices].tolist())) > 1]
    assert mixed, "the last levels of a block have to span both"
    assert sum(mixed) <= 1e-6 * f.error**2, "levels spanning both blocks carry error"
    # reconstruction keeps the zero blocks zero
    other = membership[:, None] != membership[None, :]
    assert np.abs(f.reconstruct()[other]).max() <= 1e-9 * np.abs(full).max()


@pytest.mark.parametrize("kind", ["dense", "factored"])
def test_staged_planted_six_blocks_rotations_stay_inside_blocks(kind):
    """Six blocks of 20, clusters of 32 (a cluster cannot hold whole blocks): the rotations
    still never mix blocks, so the reconstruction stays block diagonal."""
    C, kwargs, membership = _planted(kind, 6, 20, 0)
    f = ms.factorize(C, order=4, core_size=12, schedule="staged", options=SMALL_STAGES, **kwargs)
    full = C if C is not None else kwargs["means"] @ kwargs["means"].T
    _check_valid(f, full)
    _rotations_stay_inside_blocks(f, membership)
    other = membership[:, None] != membership[None, :]
    assert np.abs(f.reconstruct()[other]).max() <= 1e-9 * np.abs(full).max()


@pytest.mark.parametrize("kind", ["dense", "factored"])
def test_staged_planted_six_blocks_coupled_levels_stay_inside_blocks(kind):
    """Six blocks of 20, clusters of 32: a cluster holding fewer than k rows of a block
    stops before it would pad a tuple with rows of another block (seed 0 had 8 such
    levels with error > 0 dense, 7 factored, e.g. blocks [4 5 3 5] with squared error
    170 in the first stage); those rows wait for the next stage, as greedy never mixes
    blocks at a cost. The error is lower for it (dense 2.91 -> 2.82, factored 140 -> 130)."""
    C, kwargs, membership = _planted(kind, 6, 20, 0)
    f = ms.factorize(C, order=4, core_size=12, schedule="staged", options=SMALL_STAGES, **kwargs)
    scale = f.level_errors.max()
    mixed = [level.number for level in f.levels
             if len(set(membership[level.indices].tolist())) > 1 and level.squared_error > 1e-9 * scale]
    assert mixed == []
    assert f.error <= {"dense": 2.85, "factored": 132.0}[kind]
    full = C if C is not None else kwargs["means"] @ kwargs["means"].T
    _check_valid(f, full)


def test_is_decoupled_finds_padded_tuples():
    """A tuple of two uncoupled groups is decoupled; a chain of couplings is not."""
    rng = np.random.default_rng(3)
    X = rng.normal(size=(4, 10))
    X[:2, 5:] = 0.0
    X[2:, :5] = 0.0  # rows {0, 1} and {2, 3} share no column
    gram, block = X @ X.T, np.diag(np.diag(X @ X.T))
    tolerance = ms.EngineOptions().decoupled_tolerance
    assert is_decoupled(gram, block, tolerance)
    assert is_decoupled(block, block, tolerance)  # no off-diagonal coupling at all
    Y = rng.normal(size=(4, 10))
    assert not is_decoupled(Y @ Y.T, np.eye(4), tolerance)
    chain = np.eye(4) + np.diag([0.3, 0.3, 0.3], 1) + np.diag([0.3, 0.3, 0.3], -1)
    assert not is_decoupled(np.eye(4), chain, tolerance)  # 0-1-2-3 coupled through the block only
    chain[1, 2] = chain[2, 1] = 1e-14
    assert is_decoupled(np.eye(4), chain, tolerance)  # below the tolerance


@pytest.mark.parametrize("blocks", [1, 2])
def test_staged_on_decoupled_rows_still_runs_stages(blocks):
    """Blocks of 1 or 2 rows (< k): every tuple is decoupled, so every cluster stops at once.
    Above 4 * greedy_below active indices the next stages pass decoupled tuples over, then stop
    checking, so the run still advances in stages (it neither loops nor hands 400 indices to
    plain greedy), with exact errors."""
    rng = np.random.default_rng(blocks)
    n = 400
    C = np.zeros((n, n))
    for start in range(0, n, blocks):
        X = rng.normal(size=(blocks, 3))
        C[start : start + blocks, start : start + blocks] = X @ X.T
    order = rng.permutation(n)
    C = C[np.ix_(order, order)]
    run, stages = _recording_map("in turn")
    f = ms.factorize(C, order=4, core_size=10, schedule="staged", options=SMALL_STAGES, map_clusters=run)
    # stop (no level), skip (none either: every tuple is decoupled), unchecked (levels), ...
    assert len(stages) >= 3 and stages[0] == stages[1] == stages[2] == int(np.ceil(n / 32))
    assert f.n_levels == n - 10
    _check_valid(f, C)
    _squared_norm_identity(f, C)


def test_staged_stage_without_levels_hands_small_runs_to_greedy():
    """At most 4 * greedy_below active indices, a stage without levels ends the stages: one stage."""
    C = np.diag(np.random.default_rng(0).uniform(1.0, 2.0, 150))
    run, stages = _recording_map("in turn")
    f = ms.factorize(C, order=4, core_size=10, schedule="staged", options=SMALL_STAGES, map_clusters=run)
    assert len(stages) == 1 and f.n_levels == 140
    _check_valid(f, C)


def test_decoupled_tolerance_none_is_the_unstopped_run():
    """``decoupled_tolerance=None`` keeps the clusters' levels running (the planted blocks then mix)."""
    C, _, membership = _planted("dense", 6, 20, 0)
    f = ms.factorize(C, order=4, core_size=12, schedule="staged",
                     options=dict(SMALL_STAGES, decoupled_tolerance=None))
    scale = f.level_errors.max()
    mixed = [level.number for level in f.levels
             if len(set(membership[level.indices].tolist())) > 1 and level.squared_error > 1e-9 * scale]
    assert mixed
    _check_valid(f, C)
    with pytest.raises(ValueError, match="decoupled_tolerance"):
        ms.factorize(C, order=4, core_size=12, schedule="staged", options=dict(decoupled_tolerance=2.0))


def test_greedy_planted_six_blocks_coupled_levels_stay_inside_blocks():
    """The reference the staged test above compares with."""
    C, _, membership = _planted("dense", 6, 20, 0)
    f = ms.factorize(C, order=4, core_size=12, schedule="greedy")
    scale = f.level_errors.max()
    for level in f.levels:
        if len(set(membership[level.indices].tolist())) > 1:
            assert level.squared_error <= 1e-9 * scale


# ------------------------------------------------------------------ partition


def _check_partition(groups, n, cluster_size):
    everything = np.concatenate(groups)
    assert everything.shape == (n,)
    np.testing.assert_array_equal(np.sort(everything), np.arange(n))  # each index exactly once
    assert all(0 < g.shape[0] <= cluster_size for g in groups)
    # balanced: as few groups as the size allows, none tiny
    assert len(groups) == int(np.ceil(n / cluster_size))
    assert min(g.shape[0] for g in groups) >= cluster_size // 2


def _together(groups, membership):
    """Fraction of rows that sit in the group holding most of their planted cluster."""
    label = np.empty(membership.shape[0], dtype=np.int64)
    for number, group in enumerate(groups):
        label[group] = number
    return sum(np.bincount(label[membership == b]).max() for b in np.unique(membership)) / membership.shape[0]


@pytest.mark.parametrize("n,width,cluster_size", [(200, 8, 16), (257, 30, 64), (100, 5, 100), (1000, 3, 37)])
def test_partition_is_a_partition_into_bounded_groups(n, width, cluster_size):
    features = np.random.default_rng(n).normal(size=(n, width))
    groups = partition(features, cluster_size, np.random.default_rng(0))
    _check_partition(groups, n, cluster_size)
    again = partition(features, cluster_size, np.random.default_rng(0))
    assert all(np.array_equal(a, b) for a, b in zip(groups, again))  # deterministic for a state


def test_partition_handles_zero_and_repeated_rows():
    features = np.zeros((90, 6))
    features[:30] = 1.0
    groups = partition(features, 20, np.random.default_rng(1))
    _check_partition(groups, 90, 20)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_partition_keeps_planted_clusters_together(seed):
    rng = np.random.default_rng(seed)
    centres = 3.0 * rng.normal(size=(8, 16))
    membership = np.repeat(np.arange(8), 25)
    features = centres[membership] + rng.normal(size=(200, 16))
    order = rng.permutation(200)
    features, membership = features[order], membership[order]
    groups = partition(features, 25, np.random.default_rng(seed))
    _check_partition(groups, 200, 25)
    assert _together(groups, membership) >= 0.8
    # groups of 50 hold two planted clusters each
    groups = partition(features, 50, np.random.default_rng(seed))
    assert _together(groups, membership) >= 0.8


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_partition_of_planted_block_rows_keeps_blocks_together(seed):
    """The features a dense stage clusters (a sketch ``C R``) of a block-diagonal C."""
    C, membership = planted_blocks(blocks=6, block_size=20, seed=seed)
    features = C @ np.random.default_rng(seed).standard_normal((120, 64))
    groups = partition(features, 20, np.random.default_rng(seed))
    _check_partition(groups, 120, 20)
    assert _together(groups, membership) >= 0.9
    groups = partition(features, 40, np.random.default_rng(seed))
    assert _together(groups, membership) >= 0.9


def test_partition_beats_chance_on_planted_blocks():
    """A random split would keep about a third of each block together; the tree must do far better."""
    C, membership = planted_blocks(blocks=6, block_size=20, seed=4)
    features = C @ np.random.default_rng(0).standard_normal((120, 64))
    rng = np.random.default_rng(0)
    chance = np.mean([_together(np.array_split(rng.permutation(120), 6), membership) for _ in range(20)])
    assert _together(partition(features, 20, np.random.default_rng(0)), membership) > chance + 0.4


# --------------------------------------------------------- schedule and options


@pytest.mark.parametrize("kwargs", [{}, {"means": True}])
def test_unknown_schedule_names_the_choices(kwargs):
    M = np.random.default_rng(0).normal(size=(20, 4))
    source = {"means": M} if kwargs else {"C": M @ M.T}
    with pytest.raises(ValueError, match="schedule") as info:
        ms.factorize(order=3, schedule="fast", **source)
    message = str(info.value)
    for choice in ("auto", "greedy", "staged", "fast"):
        assert choice in message


@pytest.mark.parametrize("bad", [None, 3, "Staged"])
def test_schedule_must_be_a_known_string(bad):
    with pytest.raises(ValueError, match="schedule"):
        ms.factorize(random_symmetric(10), order=3, schedule=bad)


def test_auto_schedule_picks_greedy_small_and_staged_large():
    C = random_symmetric(120, seed=2, rank=20)
    assert ms.factorize(C, order=3, core_size=10).metadata["schedule"] == "greedy"
    options = dict(auto_dense_greedy_max=100, cluster_size=32, greedy_below=40)
    f = ms.factorize(C, order=3, core_size=10, options=options)
    assert f.metadata["schedule"] == "staged"
    _assert_bitwise_equal(f, ms.factorize(C, order=3, core_size=10, options=options, schedule="staged"))
    M = np.random.default_rng(0).normal(size=(120, 10))
    assert ms.factorize(means=M, order=3, core_size=10).metadata["schedule"] == "greedy"
    f = ms.factorize(means=M, order=3, core_size=10, options=dict(auto_factored_greedy_max=100, **SMALL_STAGES))
    assert f.metadata["schedule"] == "staged"


def test_exhaustive_candidates_run_greedy_even_when_staged_is_asked():
    C = random_symmetric(9, seed=3, rank=5)
    f = ms.factorize(C, order=2, core_size=4, candidates="exhaustive", schedule="staged")
    assert f.metadata["schedule"] == "greedy"
    _check_valid(f, C)


@pytest.mark.parametrize("options,error", [
    (dict(cluster_size=8), ValueError),
    (dict(cluster_size=32.0), ValueError),
    (dict(greedy_below=1), ValueError),
    (dict(stage_fraction=0.0), ValueError),
    (dict(stage_fraction=0.95), ValueError),
    (dict(removal_wake_budget=-1), ValueError),
    (dict(removal_wake_capture=0.0), ValueError),
    (dict(removal_wake_capture=1.5), ValueError),
    (dict(cluster_sise=64), ValueError),
    ("cluster_size=64", TypeError),
])
def test_bad_engine_options(options, error):
    with pytest.raises(error, match="option"):
        ms.factorize(random_symmetric(20), order=3, schedule="staged", options=options)


def test_options_object_and_dict_are_the_same():
    C = random_symmetric(150, seed=6, rank=25)
    a = ms.factorize(C, order=3, core_size=10, schedule="staged", options=ms.EngineOptions(**SMALL_STAGES))
    b = ms.factorize(C, order=3, core_size=10, schedule="staged", options=SMALL_STAGES)
    _assert_bitwise_equal(a, b)
    assert a.metadata["options"] == ms.EngineOptions(**SMALL_STAGES)


def test_stage_options_have_an_effect():
    """Different cluster sizes make different stages (the options reach the engine)."""
    C = random_symmetric(200, seed=7, rank=30)
    runs = {}
    for size in (16, 32, 64):
        run, stages = _recording_map("in turn")
        runs[size] = ms.factorize(C, order=3, core_size=10, schedule="staged",
                                  options=dict(cluster_size=size, greedy_below=40), map_clusters=run)
        assert max(stages) >= 200 // size
        _check_valid(runs[size], C)
    assert not np.array_equal(runs[16].tuples, runs[64].tuples)


# ------------------------------------------------------------ quality vs greedy


@pytest.mark.parametrize("seed,order,core,options", [
    (0, 4, 50, dict(cluster_size=64, greedy_below=100)),
    (2, 4, 50, dict(cluster_size=64, greedy_below=100)),
    (0, 5, None, dict(cluster_size=128, greedy_below=200)),
])
def test_staged_error_close_to_greedy_on_hierarchical_covariance(seed, order, core, options):
    C = ms.hierarchical_covariance(400, seed=seed)
    greedy = ms.factorize(C, order=order, core_size=core, schedule="greedy")
    run, stages = _recording_map("in turn")
    staged = ms.factorize(C, order=order, core_size=core, schedule="staged", options=options, map_clusters=run)
    assert max(stages) >= 3
    assert staged.error <= 1.3 * greedy.error


def test_factorizations_do_not_depend_on_the_blas_kernel(tmp_path):
    """Dense greedy and staged: the same bits whichever kernel OpenBLAS picks (numba's ``@`` on
    the small rotation blocks called BLAS, whose Prescott kernel rounds differently from
    Haswell's and SkylakeX's). Factored runs multiply the means with BLAS: the same tuples,
    level errors equal to rounding."""
    script = (
        "import sys, numpy as np\n"
        "import mmf_stream as ms\n"
        "from mmf_stream.engine.row_blocks import stable_gram\n"
        "rng = np.random.default_rng(3)\n"
        "M = rng.standard_normal((150, 40)) + rng.standard_normal((1, 40))\n"
        "C = stable_gram(M) / 40\n"
        "stages = dict(cluster_size=32, greedy_below=30)\n"
        "out = {}\n"
        "for name, kwargs in [('dense', dict(matrix=C)), ('factored', dict(means=M))]:\n"
        "    for schedule in ('greedy', 'staged'):\n"
        "        f = ms.factorize(kwargs.get('matrix'), means=kwargs.get('means'), order=4, core_size=10, schedule=schedule, options=stages)\n"
        "        out[name + schedule + 't'] = f.tuples\n"
        "        out[name + schedule + 'r'] = f.rotations\n"
        "        out[name + schedule + 'e'] = f.level_errors\n"
        "np.savez(sys.argv[1], **out)\n"
    )
    results = run_under_each_openblas_core(script, tmp_path)
    first = next(iter(results.values()))
    assert len(first.files) == 12
    differ = [(core, name) for core, result in results.items() for name in first.files
              if name.startswith("dense") or name.endswith("t")
              if not np.array_equal(result[name], first[name])]
    assert not differ
    # The factored engine still multiplies with BLAS, so its rotations and level errors move at
    # rounding level (a level's error ~1e3 moves by ~1e-3 after a hundred levels); the same
    # tuples and the same total error (to 1e-6) are what it promises.
    for result in results.values():
        for name in first.files:
            if name.startswith("factored") and name.endswith("e"):
                np.testing.assert_allclose(result[name], first[name], rtol=1e-4)
                np.testing.assert_allclose(result[name].sum(), first[name].sum(), rtol=1e-6)
