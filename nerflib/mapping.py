"""The mappers of structure from motion and mapper="auto"'s choice between them (pycolmap).

`map_database` runs one mapper (COLMAP's incremental mapper, or GLOMAP's global mapping) on
a database of verified matches; `map_and_choose` runs the mapper asked for, or for "auto"
global mapping first (from AUTO_GLOBAL_MIN_IMAGES photos) and incremental mapping when the
global model's diagnostics (`nerflib.pose_checks.diagnose`) find it wanting
(`auto_fallback_reason`), and keeps the model with the fewest problem photos.
`nerflib.sfm.run_sfm` runs it as its third stage.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from nerflib import pose_checks

MAPPERS = ("incremental", "global", "auto")
# mapper="auto" (from AUTO_GLOBAL_MIN_IMAGES photos) runs global mapping first
# and falls back to incremental mapping (on the same matches) when the global
# model's poses contradict the verified pairs, its path jumps, a camera's
# intrinsics are implausible, or more than AUTO_MAX_PROBLEM_FRACTION of the
# photos (at least one) are unregistered or weak (pose_checks.diagnose);
# `auto_fallback_reason`. Then the model with fewer such photos is kept.
AUTO_MAX_PROBLEM_FRACTION = 0.01
# mapper="auto" maps captures of fewer photos than this incrementally, without
# trying global mapping. Measured on 2 shared CPU cores, mapping the same
# matches (global vs incremental): 24 bonsai photos 12.6 s vs 7.2 s; a 60-frame
# synthetic orbit 36 s vs 9.4 s; a 200-frame synthetic video (sequential
# matcher) 227 s vs 223 s wall, 125 s vs 69 s of CPU; bonsai's 292 photos
# (exhaustive) 397 s vs 872 s, the models agreeing to 0.007 deg. The crossover
# lies between 200 and 292 photos.
AUTO_GLOBAL_MIN_IMAGES = 250



def map_database(database, image_dir, models_dir, *, mapper: str, threads: int = -1, seed: int = 0) -> dict:
    """Run one mapper on a COLMAP database with verified matches: {model index: pycolmap.Reconstruction}.

    mapper: "incremental" (COLMAP's incremental mapper) or "global" (GLOMAP,
    pycolmap.global_mapping); "auto" is run_sfm's choice between the two.
    models_dir: an existing empty folder; COLMAP writes each model there (0/, 1/ ...).
    An empty dict when no model was found (no initial pair).
    """
    import pycolmap

    if mapper == "global":
        options = pycolmap.GlobalPipelineOptions()
        options.num_threads = threads
        options.random_seed = seed
        return dict(pycolmap.global_mapping(database, image_dir, models_dir, options))
    if mapper == "incremental":
        options = pycolmap.IncrementalPipelineOptions()
        options.num_threads = threads
        options.mapper.num_threads = threads
        options.random_seed = seed
        options.mapper.random_seed = seed
        return dict(pycolmap.incremental_mapping(database, image_dir, models_dir, options))
    raise ValueError(f"map_database runs 'incremental' or 'global', got {mapper!r}")


def auto_mappers(n: int) -> tuple[tuple[str, ...], str]:
    """mapper="auto"'s plan for n photos: the mappers to try in order, and why (the summary's mapper_reason).

    Fewer than AUTO_GLOBAL_MIN_IMAGES photos: incremental mapping only. Else
    global mapping, then incremental mapping when `auto_fallback_reason` finds
    the global model wanting.
    """
    if n < AUTO_GLOBAL_MIN_IMAGES:
        return ("incremental",), (f"auto: {n} photos < {AUTO_GLOBAL_MIN_IMAGES}, where incremental mapping is "
                                  "the faster")
    return ("global", "incremental"), "auto: global mapping"


def auto_fallback_reason(total: int, registered: int, diag: dict | None) -> str | None:
    """Why mapper="auto" should not keep a global model (None: keep it).

    total: photos; registered: registered in the kept model; diag: its
    pose_checks.diagnose dict (None: no model). Reasons, the first that holds:
    no model; photos whose strongest verified pairs contradict their poses
    (pose_checks_pairs: names the photo itself, where a path jump may leave the
    wrong side of it suspect); path jumps (suspect frames of an ordered
    capture); implausible intrinsics; more than AUTO_MAX_PROBLEM_FRACTION of the photos
    unregistered or weak. A split view graph is no reason: both mappers see
    the same matches.
    """
    if diag is None or registered == 0:
        return "found no model"
    contradicted = diag.get("pairs", {}).get("contradicted", [])
    if contradicted:
        return (f"gave {len(contradicted)} photo(s) poses that their own verified pairs contradict "
                f"({_names_short(contradicted)})")
    suspect = diag.get("continuity", {}).get("suspect", [])
    if suspect:
        jumps = len(diag["continuity"]["jumps"])
        return f"gave a camera path with {jumps} jump(s), {len(suspect)} frame(s) suspect ({_names_short(suspect)})"
    bad = [c for c in diag.get("cameras", []) if c.get("problem")]
    if bad:
        return f"gave implausible intrinsics ({bad[0]['problem']})"
    problems = problem_count(total, registered, diag)
    tolerated = math.floor(AUTO_MAX_PROBLEM_FRACTION * total)
    if problems > tolerated:
        return (f"left {total - registered} of {total} photos unregistered and {len(diag.get('weak', []))} weak "
                f"(tolerated: {tolerated}, {AUTO_MAX_PROBLEM_FRACTION:.0%})")
    return None


def problem_count(total: int, registered: int, diag: dict | None) -> int:
    """Photos that a model does not pose trustworthily: unregistered + flagged by the diagnostics."""
    if diag is None:
        return total
    return total - registered + len(diag.get("flagged", []))


def _names_short(names, k: int = 5) -> str:
    names = list(names)
    return ", ".join(names[:k]) + (f" and {len(names) - k} more" if len(names) > k else "")


def map_attempt(mapper, database, image_dir, models_dir, names, *, threads, seed, ordered, log) -> dict:
    """One mapper run and the diagnostics of its largest model (map_and_choose's unit)."""
    t0 = time.perf_counter()
    models_dir.mkdir()
    models = map_database(database, image_dir, models_dir, mapper=mapper, threads=threads, seed=seed)
    seconds = time.perf_counter() - t0
    counts = {int(k): int(rec.num_reg_images()) for k, rec in models.items()}
    log(f"[sfm] mapping ({mapper}): {len(models)} model(s) with {sorted(counts.values(), reverse=True)} "
        f"registered images, {seconds:.1f} s")
    attempt = {"mapper": mapper, "models": models, "counts": counts, "kept": None, "rec": None, "diag": None,
               "registered": 0, "seconds": seconds}
    if models:
        kept = max(counts, key=lambda k: (counts[k], -k))
        rec = models[kept]
        attempt.update(kept=kept, rec=rec, registered=counts[kept],
                       diag=pose_checks.diagnose(rec, names, database=database, ordered=ordered))
    return attempt


def attempt_record(a: dict, total: int) -> dict:
    """The JSON-able part of a map_attempt result (summary.json's mapper_attempts)."""
    diag = a["diag"]
    return {"mapper": a["mapper"], "registered": a["registered"], "models": len(a["models"]),
            "problems": problem_count(total, a["registered"], diag),
            "warnings": len(diag["warnings"]) if diag else None, "seconds": round(a["seconds"], 3)}


def map_and_choose(database, image_dir, work, names, *, mapper: str, matcher: str, threads: int, seed: int,
                   log: Callable[[str], None]) -> dict:
    """Map (incremental, global: GLOMAP, or auto: `auto_mappers`) and choose a model (run_sfm's step 3).

    work: a folder where each mapper writes its models (models_<mapper>/). Returns attempts (map_attempt
    results), chosen (the attempt whose largest model is kept: fewest problem photos, then most
    registered) and reason (why that mapper, for the summary).
    """
    n = len(names)
    ordered = True if matcher == "sequential" else None  # None: judged from the matches
    attempts = []
    order, reason = auto_mappers(n) if mapper == "auto" else ((mapper,), "requested")
    for m in order:
        attempts.append(map_attempt(m, database, image_dir, work / f"models_{m}", names, threads=threads,
                                    seed=seed, ordered=ordered, log=log))
        if m == order[-1]:
            break
        why = auto_fallback_reason(n, attempts[-1]["registered"], attempts[-1]["diag"])
        if why is None:
            reason = "auto: global mapping registered the photos and its diagnostics are clean"
            break
        reason = f"auto: global mapping {why}"
        log(f"[sfm] mapper auto: global mapping {why}; trying incremental mapping on the same matches")
    chosen = min(attempts, key=lambda a: (problem_count(n, a["registered"], a["diag"]), -a["registered"]))
    if len(attempts) > 1:
        tally = ", ".join(f"{a['mapper']} {problem_count(n, a['registered'], a['diag'])}" for a in attempts)
        reason += f"; incremental tried, {chosen['mapper']} kept (photos unregistered or flagged: {tally})"
        log(f"[sfm] mapper auto: keeping the {chosen['mapper']} model ({reason})")
    return {"attempts": attempts, "chosen": chosen, "reason": reason}
