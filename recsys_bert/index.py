"""Approximate index over the catalogue's item vectors (faiss, inner product): the index proposes candidates for
each user, the user's history is added to them, and all are re-scored from the catalogue's vectors by the model's
formula (its repeat bias, temperature, excluded items, ties), so what it returns differs from
`recsys_bert.retrieval.top_k` only in items the index did not propose.

An index is described by a few parameters (`index_params`): `factory`, a faiss index factory string such as
`"Flat"`, `"HNSW32"`, `"IVF4096,Flat"` or `"IVF4096,PQ192x4fs"` (4-bit fast-scan codes: 96 bytes an item at width
384, no copy of the vectors), and HNSW's `ef_construction`, fixed when the index is built; the search-time
`ef_search` (HNSW), `nprobe` (IVF) and `k_factor` (the index is asked for `k_factor` x the candidates wanted, all
re-scored exactly), set on an index at any time and never part of its file's key. Built indexes are cached beside the
catalogue's vector cache in faiss's own file format, keyed by the vectors' cache key and the build-time parameters.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
import torch

from recsys_bert.modeling import RecsysBertModel
from recsys_bert.utils import atomic_path, one_line

logger = logging.getLogger(__name__)

# our key -> faiss.ParameterSpace's name (None: ours, `ItemIndex.k_factor`)
SEARCH_PARAMS = {"ef_search": "efSearch", "nprobe": "nprobe", "k_factor": None}
# benchmarks/index_results.json (MiniLM movie vectors tiled with noise of norm .5, 2 cores, 2026-12-04):
# IVF4096,PQ192x4fs at nprobe 256 with 12 x 100 candidates re-scored: recall@100 .965 at 11-14x the exact scan's
# users/s at 1M items, .862 at 19x at 10M; on random vectors recall .22. Below about 100k items an IVF of recall
# ~.95 gains little over the exact scan
EXACT_BELOW = 100_000
NPROBE_REFINED = 256  # lists searched of MAX_NLIST, the same share of fewer lists
K_FACTOR = 12
EF_SEARCH = 512  # HNSW32 where the width can't be split in 2-dim sub-vectors
MAX_NLIST = 4096
ADD_BLOCK = 1 << 18  # vectors converted to float32 and added at once: a float16 catalogue is never copied whole
RESCORE_FLOATS = 1 << 24  # gathered candidate vectors re-scored at once (64 MiB of float32)


@dataclass
class ItemIndex:
    """A faiss index over the catalogue's item vectors and how many candidates to ask it for.

    Args:
        faiss_index: an inner-product index over the item vectors (`build_index`).
        k_factor: the index is asked for `k_factor` x the candidates wanted per user, all re-scored exactly from the
            item vectors (1 for an index that stores the vectors as they are; more for compressed codes).
    """

    faiss_index: faiss.Index
    k_factor: int = 1

    @property
    def ntotal(self) -> int:
        return self.faiss_index.ntotal


def index_params(num_items: int, dim: int) -> dict:
    """Default index parameters for a catalogue of `num_items` vectors of width `dim`, after faiss's guidelines
    (github.com/facebookresearch/faiss/wiki/Guidelines-to-choose-an-index) and benchmarks/rank_throughput.py
    --index: an exact `Flat` index below `EXACT_BELOW` items, where scanning everything is about as fast; past
    that, `ivf_params`.

    Returns:
        `{"factory": faiss index factory string}`, with the search-time `"nprobe"` (and `"k_factor"`) for IVF or
        `"ef_search"` for HNSW.
    """
    if num_items < EXACT_BELOW:
        return {"factory": "Flat"}
    return ivf_params(num_items, dim)


def ivf_params(num_items: int, dim: int) -> dict:
    """An IVF of nlist the power of 2 nearest 4 sqrt(items), at most `MAX_NLIST` (k-means training grows with
    nlist^2: 4096 lists over 1M vectors took 60-190 s on 2 cores), holding 4-bit fast-scan PQ codes of 2 dims each
    (`PQ{dim/2}x4fs`, SIMD look-ups: ~8x the speed of an `IVF,Flat` scan of as many lists, and no copy of the
    vectors: 96 bytes an item at width 384), `NPROBE_REFINED` lists of 4096 searched and `K_FACTOR` x the candidates
    re-scored exactly from the item vectors; an odd width can't be split so, and gets HNSW32 (efConstruction 40)."""
    nlist = min(MAX_NLIST, 2 ** round(math.log2(4 * math.sqrt(num_items))))
    if dim % 2:
        return {"factory": "HNSW32", "ef_search": EF_SEARCH}
    nprobe = max(1, NPROBE_REFINED * nlist // MAX_NLIST)
    return {"factory": f"IVF{nlist},PQ{dim // 2}x4fs", "nprobe": nprobe, "k_factor": K_FACTOR}


def set_search_params(index: ItemIndex, params: dict) -> None:
    """Sets the search-time parameters of `params` (`ef_search`, `nprobe`, `k_factor`) that apply to `index`. An index
    that re-ranks its own candidates from a float32 copy of the vectors (a factory ending in `,RFlat`) takes
    `k_factor` itself, so that only the candidates it keeps are re-scored again."""
    if params.get("k_factor") is not None:
        refine = faiss.downcast_index(index.faiss_index)
        if isinstance(refine, faiss.IndexRefine):
            refine.k_factor, index.k_factor = params["k_factor"], 1
        else:
            index.k_factor = params["k_factor"]
    space = faiss.ParameterSpace()
    for key, name in SEARCH_PARAMS.items():
        if name is not None and params.get(key) is not None:
            try:
                space.set_index_parameter(index.faiss_index, name, params[key])
            except RuntimeError:  # not a parameter of this kind of index (nprobe of an HNSW)
                pass


def build_index(vectors: torch.Tensor, params: dict) -> ItemIndex:
    """An inner-product index over `vectors` (`(items, dim)`, unit rows, float32 or float16: added in blocks of
    `ADD_BLOCK` rows), with faiss using torch's number of threads.

    Args:
        params: `factory` (faiss index factory string), HNSW's `ef_construction` and the search-time parameters
            (`ef_search`, `nprobe`, `k_factor`).
    """
    faiss.omp_set_num_threads(torch.get_num_threads())
    num_items, dim = vectors.shape
    index = faiss.index_factory(dim, params["factory"], faiss.METRIC_INNER_PRODUCT)
    if params.get("ef_construction") is not None:  # HNSW's build-time breadth (faiss's default 40)
        hnsw = getattr(faiss.downcast_index(index), "hnsw", None)
        if hnsw is None:
            raise ValueError(f"ef_construction is a parameter of an HNSW index, not of {params['factory']!r}")
        hnsw.efConstruction = params["ef_construction"]
    if not index.is_trained:  # IVF centroids, product quantizer codebooks: trained on a fixed random sample
        ivf = faiss.try_extract_index_ivf(index)
        size = min(num_items, max(100_000, 50 * ivf.nlist if ivf is not None else 0))
        rows = torch.randperm(num_items, generator=torch.Generator().manual_seed(0))[:size].sort().values
        index.train(_float32(vectors[rows]))
    for start in range(0, num_items, ADD_BLOCK):
        index.add(_float32(vectors[start : start + ADD_BLOCK]))
    item_index = ItemIndex(index)
    set_search_params(item_index, params)
    return item_index


def _float32(vectors: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(vectors.detach().cpu().float().numpy())


def index_path(cache_dir: Path, key: str, params: dict) -> Path:
    """`<cache_dir>/<key>.<hash of the build-time params>.faiss`: search-time params never change the file."""
    build = {name: value for name, value in sorted(params.items()) if name not in SEARCH_PARAMS}
    return cache_dir / f"{key}.{hashlib.sha256(json.dumps(build).encode()).hexdigest()[:12]}.faiss"


def load_or_build(vectors: torch.Tensor, cache_dir: Path | None, key: str, params: dict) -> tuple[ItemIndex, bool]:
    """The index of `vectors` from `cache_dir` (beside the vector cache, under the vectors' cache `key`), or built
    and written there (to a temporary name, renamed); a damaged or mismatched file is rebuilt with a warning.

    Returns:
        The index, with `params`' search-time parameters set, and whether it came from disk.
    """
    path = index_path(cache_dir, key, params) if cache_dir is not None else None
    if path is not None and path.is_file():
        try:
            index = faiss.read_index(str(path))
            if index.ntotal == vectors.shape[0] and index.d == vectors.shape[1]:
                faiss.omp_set_num_threads(torch.get_num_threads())
                item_index = ItemIndex(index)
                set_search_params(item_index, params)
                return item_index, True
            logger.warning("rebuilding the index %s: it holds %d vectors of %d, not %d of %d",
                           path, index.ntotal, index.d, *vectors.shape)  # fmt: skip
        except Exception as err:  # a damaged index file is rebuilt, never fatal
            logger.warning("rebuilding the damaged index %s (%s)", path, one_line(err))
    index = build_index(vectors, params)
    if path is not None:
        try:
            with atomic_path(path) as tmp:
                faiss.write_index(index.faiss_index, str(tmp))
        except (OSError, RuntimeError) as err:
            logger.warning("could not write the index %s (%s)", path, one_line(err))
    return index, False


def _members(candidates: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """`(users, c)` bool: which of each row's `candidates` are among the same row's `ids` `(users, n)` (-1 = none)."""
    if ids.shape[1] == 0:
        return torch.zeros_like(candidates, dtype=torch.bool)
    ids = ids.sort(dim=1).values  # (users, n)
    position = torch.searchsorted(ids, candidates).clamp(max=ids.shape[1] - 1)  # (users, c)
    return (ids.gather(1, position) == candidates) & (candidates >= 0)


def _candidate_dots(queries: torch.Tensor, items: torch.Tensor, found: torch.Tensor) -> torch.Tensor:
    """`(users, c)` dot products of each user's query `(users, dim)` with the `items` rows `found` `(users, c)` names
    (-inf where it is -1). float32 items on the CPU: faiss's `fvec_inner_products_by_idx`, what its refined indexes
    re-score with (no gathered copy: 7x torch's gather and product at 1M x 384); else a gather in blocks of
    `RESCORE_FLOATS`, a product and a sum along each row (a batched matrix product rounds rows by where they fall)."""
    if items.dtype == torch.float32 and items.device.type == "cpu" and items.is_contiguous():
        x, ids = _float32(queries), np.ascontiguousarray(found.clamp(min=0).numpy(), dtype=np.int64)
        dots = np.empty(ids.shape, dtype=np.float32)
        faiss.fvec_inner_products_by_idx(faiss.swig_ptr(dots), faiss.swig_ptr(x), faiss.swig_ptr(items.numpy()),
                                         faiss.swig_ptr(ids), items.shape[1], *ids.shape)  # fmt: skip
        dots = torch.from_numpy(dots)
    else:
        step = max(1, RESCORE_FLOATS // max(1, found.shape[1] * items.shape[1]))  # users at once
        dots = torch.cat([
            (items[found[s : s + step].clamp(min=0)].float() * queries[s : s + step, None, :]).sum(dim=2)
            for s in range(0, len(found), step)
        ]) if len(found) else queries.new_zeros(found.shape)  # fmt: skip
    return dots.masked_fill(found < 0, -torch.inf)  # (users, c)


def _longest(ids: torch.Tensor | None) -> int:
    return int((ids >= 0).sum(dim=1).max()) if ids is not None and ids.numel() else 0


@torch.no_grad()
def index_top_k(
    index: ItemIndex,
    users: torch.Tensor,
    items: torch.Tensor,
    k: int,
    model: RecsysBertModel,
    history_ids: torch.Tensor | None = None,
    exclude: torch.Tensor | None = None,
    candidates: int | None = None,
    ties_against: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The `k` best items per user among the index's candidates, scored exactly as `model.score` scores them.

    The index is searched with the user vectors for `index.k_factor` x `candidates` items; each user's `history_ids`
    are added to them (the repeat bias, which the index can't see, may lift them into the top `k`), and every
    candidate is re-scored from `items` by the model's formula, (dot(user, item) + `repeat_bias` if the item is in
    `history_ids`) / `score_temperature` (each dot product computed alike wherever the item falls, so copies tie):
    the index only proposes, its own (compressed) dot products are never used, so where it proposes every item that
    `retrieval.top_k` returns (an exhaustive index, or any at full recall) the lists are the same, up to float
    rounding at near-ties.

    Args:
        index: an index over `items` (`build_index`, `load_or_build`).
        users (`(users, dim)`), items (`(items, dim)`; float16 is read as float32): unit vectors.
        model: the recommender whose `score` this reproduces (`score_temperature`, `repeat_bias`).
        history_ids (`(users, length)`): the catalogue indices the repeat bias covers, as `model.score` takes them
            (-1 = padding; indices past `items`, such as new texts, are ignored); always scored.
        exclude (`(users, n)`): item indices each user must not get (-1 = padding), as `retrieval.top_k`.
        candidates: items wanted from the index per user before `k_factor`; default `k` + the longest `exclude`
            and `history_ids` rows, enough for an exact index (`Flat`) to give exactly `retrieval.top_k`'s lists
            whatever the sign of the repeat bias (a history pushed down can't leave the list short). HNSW searches
            with max(`ef_search`, the items asked).
        ties_against (`(users,)`): an item per user (-1 = none) placed after every candidate with the same score,
            as `retrieval.top_k` places it.

    Returns:
        logits `(users, k')` best first, their item indices `(users, k')`, and the log of the softmax normalizer
        `(users,)`, as `retrieval.top_k` returns them (`k' = min(k, items)`), except that the normalizer sums over
        the scored candidates only, not the catalogue: probabilities from it are a softmax over the candidates,
        larger than the catalogue's. Rows short of `k'` valid candidates end in logit -inf (excluded items, or
        index -1 where the index found fewer items).
    """
    num_items = items.shape[0]
    k = max(1, min(k, num_items))
    wanted = min(num_items, max(k, candidates or k + _longest(exclude) + _longest(history_ids)))
    _, found = index.faiss_index.search(_float32(users), min(num_items, wanted * index.k_factor))
    found = torch.from_numpy(found).to(users.device)  # (users, asked), -1 where the index found fewer
    if history_ids is not None:  # the history scored too, whether the index proposed it or not
        history = history_ids.masked_fill(history_ids >= num_items, -1)  # (users, length)
        found = torch.cat([found, history.to(found.dtype)], dim=1)  # (users, c)
    found = found.sort(dim=1).values
    repeated = torch.zeros_like(found, dtype=torch.bool)
    repeated[:, 1:] = found[:, 1:] == found[:, :-1]
    found = found.masked_fill(repeated, -1)  # (users, c), each candidate once
    valid = found >= 0
    queries = users.float() / model.config.score_temperature  # (users, dim): the logits are their dot products
    logits = _candidate_dots(queries, items, found)  # (users, c)
    if history_ids is not None:  # model.score's repeat term
        logits[_members(found, history_ids)] += (model.repeat_bias / model.config.score_temperature).float()
    if exclude is not None:
        logits[_members(found, exclude)] = -torch.inf
    target = None
    if ties_against is not None:  # one step down to the next float: after its equals, before anything lower
        target = (found == ties_against[:, None]) & valid  # (users, c)
        logits[target] = torch.nextafter(logits[target], logits.new_tensor(-torch.inf))
    log_normalizer = logits.double().logsumexp(dim=1).float()  # (users,) over the candidates
    best_logits, order = logits.topk(k, dim=1)  # (users, k)
    best_index = found.gather(1, order)
    if ties_against is not None:  # the moved item's own score back
        moved = target.gather(1, order)
        best_logits[moved] = torch.nextafter(best_logits[moved], best_logits.new_tensor(torch.inf))
    return best_logits, best_index, log_normalizer
