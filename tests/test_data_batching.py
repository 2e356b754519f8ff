"""(seed, step)-addressed batches: determinism, per-process tiling, resume from the cache, packing."""

from __future__ import annotations

import numpy as np
import pytest

from jaxformer.config import DataConfig
from jaxformer.data import batching, load_corpus
from jaxformer.data.tokenizers import EOS
from jaxformer.errors import UserError


@pytest.fixture(scope="module")
def tokens() -> np.ndarray:
    """A token stream with documents of varied length separated by EOS, like a cached corpus."""
    rng = np.random.default_rng(7)
    stream = rng.integers(8, 300, size=20_000).astype(np.uint16)
    stream[rng.choice(len(stream), size=400, replace=False)] = EOS
    stream[100:104] = EOS  # empty-ish documents back to back are legal in the array
    return stream


def test_same_seed_and_step_give_the_same_batch(tokens):
    a = batching.batch_at(tokens, batch_size=8, seq_len=32, seed=3, step=11)
    b = batching.batch_at(tokens, batch_size=8, seq_len=32, seed=3, step=11)
    np.testing.assert_array_equal(a["tokens"], b["tokens"])
    assert a["tokens"].dtype == np.int32 and a["tokens"].shape == (8, 33)
    assert not np.array_equal(a["tokens"], batching.batch_at(tokens, batch_size=8, seq_len=32, seed=3,
                                                              step=12)["tokens"])
    assert not np.array_equal(a["tokens"], batching.batch_at(tokens, batch_size=8, seq_len=32, seed=4,
                                                              step=11)["tokens"])


def test_rows_are_contiguous_windows_of_the_stream(tokens):
    starts = batching.window_starts(len(tokens), batch_size=16, seq_len=20, seed=0, step=5)
    batch = batching.batch_at(tokens, batch_size=16, seq_len=20, seed=0, step=5)
    for row, start in zip(batch["tokens"], starts, strict=True):
        np.testing.assert_array_equal(row, tokens[start:start + 21])
    assert starts.min() >= 0 and starts.max() <= len(tokens) - 21


def test_every_window_start_is_reachable():
    stream = np.arange(40, dtype=np.uint16)
    seen = set()
    for step in range(200):
        seen.update(batching.window_starts(len(stream), batch_size=8, seq_len=9, seed=0, step=step).tolist())
    assert seen == set(range(40 - 10 + 1))  # uniform over all full windows, the last one included


@pytest.mark.parametrize("process_count", [1, 2, 4, 8])
def test_process_slices_tile_the_global_batch(tokens, process_count):
    kw = dict(batch_size=16, seq_len=24, seed=1, step=99, packing=True)
    full = batching.batch_at(tokens, **kw)
    parts = [batching.batch_at(tokens, process_index=p, process_count=process_count, **kw)
             for p in range(process_count)]
    for key in ("tokens", "segment_ids", "positions"):
        assert all(part[key].shape == (16 // process_count, 25) for part in parts)
        np.testing.assert_array_equal(np.concatenate([part[key] for part in parts]), full[key])


def test_batch_must_split_over_processes(tokens):
    with pytest.raises(UserError, match="multiple of 3"):
        batching.batch_at(tokens, batch_size=8, seq_len=8, seed=0, step=0, process_index=0, process_count=3)


def test_too_short_split_is_a_user_error():
    with pytest.raises(UserError, match="seq_len"):
        batching.batch_at(np.arange(10, dtype=np.uint16), batch_size=2, seq_len=10, seed=0, step=0)


def _naive_packing(window: np.ndarray) -> tuple[list[int], list[int]]:
    segments, positions, segment, position = [], [], 1, 0
    for i in range(len(window)):
        if i > 0 and window[i - 1] == EOS:  # the token after an EOS opens a new document
            segment += 1
            position = 0
        segments.append(segment)
        positions.append(position)
        position += 1
    return segments, positions


def test_packing_matches_a_naive_per_window_computation(tokens):
    for step in range(5):
        batch = batching.batch_at(tokens, batch_size=32, seq_len=64, seed=0, step=step, packing=True)
        assert batch["segment_ids"].dtype == np.int32 and batch["positions"].dtype == np.int32
        for row, seg, pos in zip(batch["tokens"], batch["segment_ids"], batch["positions"], strict=True):
            want_seg, want_pos = _naive_packing(row)
            assert seg.tolist() == want_seg
            assert pos.tolist() == want_pos
    assert (batch["segment_ids"] >= 1).all()  # windows are always full: no padding segment 0


def test_packing_on_a_hand_made_window():
    window = np.array([[10, 11, EOS, 12, EOS, EOS, 13, 14]])
    arrays = batching.packing_arrays(window)
    assert arrays["segment_ids"].tolist() == [[1, 1, 1, 2, 2, 3, 4, 4]]
    assert arrays["positions"].tolist() == [[0, 1, 2, 0, 1, 0, 0, 1]]


def test_eval_batches_are_fixed_spread_and_tile_per_process(tokens):
    a = batching.eval_batches(tokens, 8, 16, 4)
    b = batching.eval_batches(tokens, 8, 16, 4)
    assert len(a) == 4 and all(x["tokens"].shape == (8, 17) for x in a)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x["tokens"], y["tokens"])
    np.testing.assert_array_equal(a[0]["tokens"][0], tokens[:17])  # first window at 0, last at the end
    np.testing.assert_array_equal(a[-1]["tokens"][-1], tokens[-17:])
    halves = [batching.eval_batches(tokens, 8, 16, 4, process_index=p, process_count=2) for p in range(2)]
    for i in range(4):
        np.testing.assert_array_equal(np.concatenate([halves[0][i]["tokens"], halves[1][i]["tokens"]]),
                                      a[i]["tokens"])


def test_resumed_run_sees_the_same_batches_from_the_cache(tmp_path):
    cfg = DataConfig(source="builtin", tokenizer="byte", cache_dir=str(tmp_path / "cache"))
    first = load_corpus(cfg, tmp_path / "run", show_progress=False)
    before = [batching.batch_at(first.train, batch_size=4, seq_len=64, seed=5, step=s) for s in range(3)]
    del first
    restarted = load_corpus(cfg, tmp_path / "run", show_progress=False)  # a new process would do this
    assert isinstance(restarted.train, np.memmap)
    for s in range(3):
        after = batching.batch_at(restarted.train, batch_size=4, seq_len=64, seed=5, step=s)
        np.testing.assert_array_equal(after["tokens"], before[s]["tokens"])


def test_global_batch_assembles_sharded_arrays(tokens):
    import jax
    from jax.sharding import NamedSharding, PartitionSpec

    devices = np.array(jax.devices())
    n = len(devices)
    mesh = jax.sharding.Mesh(devices, ("data",))
    local = batching.batch_at(tokens, batch_size=4 * n, seq_len=8, seed=0, step=0, packing=True)
    arrays = batching.global_batch(local, NamedSharding(mesh, PartitionSpec("data")))
    for key, value in local.items():
        assert arrays[key].shape == value.shape and arrays[key].dtype == np.int32
        np.testing.assert_array_equal(np.asarray(arrays[key]), value)
