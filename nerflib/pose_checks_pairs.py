"""Do a reconstruction's poses agree with the verified image pairs they were built from?

Why: a mapper can return a model that registers every photo with clean path
and observation figures and still has a camera turned far from where its
matches put it (issue #22). The verified pairs of the COLMAP database are an
independent witness: each pair's inlier matches fix the relative rotation of
its two cameras (essential, fundamental or homography matrix decomposed with
the model's intrinsics), and the model's two poses must reproduce it. A photo
whose strongest pairs mostly disagree with the model is posed wrongly,
whatever the mapper's own figures say. Rotations, not epipolar distances: a
pan of a camera on an orbit moves its points along their epipolar lines, so
epipolar distances miss it (measured on the demo orbit: a 5-degree pan of one
view kept 85 % of its matches within 4 px), while the pair's rotation shows it
to 0.1 degrees.

  pair_consistency(rec, database)   per checked pair (each photo's PAIRS_PER_IMAGE
                                    strongest verified pairs): the angle between the
                                    model's relative rotation and the pair's own;
                                    per photo: `support`, the share of its checked
                                    inliers in pairs that agree (within PAIR_MAX_ROT_DEG);
                                    `contradicted`: photos with support below
                                    IMAGE_MIN_SUPPORT (named)
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np

from nerflib import rigid

# A pair agrees with the model when the model's relative rotation of its two
# cameras is within this angle of the pair's own. Measured on correct models:
# the demo orbit's pairs median 0.27 deg, bonsai's 0.32 deg; a view turned by
# 2 degrees shows 1.9-2.1 degrees on its pairs. False pairs (look-alike views)
# disagree by tens of degrees, in correct models too.
PAIR_MAX_ROT_DEG = 5.0
# Each photo's strongest verified pairs (most inliers) are checked: the most
# reliable relative poses, and a cost linear in the photos.
PAIRS_PER_IMAGE = 10
# A photo is contradicted when less than this share of its checked inliers lies
# in agreeing pairs. A photo can have a false pair (a look-alike view on the
# other side of a symmetric object) that a correct model rightly contradicts.
IMAGE_MIN_SUPPORT = 0.5
MIN_PAIR_INLIERS = 15  # pairs with fewer inlier matches are not used (COLMAP's min_num_matches)


def strongest_pairs(pairs: dict[tuple[str, str], int], k: int = PAIRS_PER_IMAGE) -> set[tuple[str, str]]:
    """The union over photos of each photo's k pairs with the most inliers; pairs: (name1, name2) -> inliers."""
    partners: dict[str, list] = {}
    for pair, inliers in pairs.items():
        for name in pair:
            partners.setdefault(name, []).append((-inliers, pair))
    return {pair for items in partners.values() for _, pair in sorted(items)[:k]}


def _read_pairs(database, names: set[str]):
    """The checked pairs {(name1, name2): TwoViewGeometry} among `names` and their keypoints [N, 2] by name."""
    import pycolmap

    skip = {pycolmap.TwoViewGeometryConfiguration.UNDEFINED, pycolmap.TwoViewGeometryConfiguration.DEGENERATE,
            pycolmap.TwoViewGeometryConfiguration.WATERMARK}
    with contextlib.closing(pycolmap.Database.open(Path(database))) as db:
        by_id = {int(im.image_id): im.name for im in db.read_all_images() if im.name in names}
        ids = {name: i for i, name in by_id.items()}
        pair_ids, geometries = db.read_two_view_geometries()
        verified = {}
        for pair_id, geom in zip(pair_ids, geometries):
            a, b = (by_id.get(int(i)) for i in pycolmap.pair_id_to_image_pair(int(pair_id)))
            if a and b and geom.config not in skip and len(geom.inlier_matches) >= MIN_PAIR_INLIERS:
                verified[(a, b)] = geom
        checked = strongest_pairs({pair: len(g.inlier_matches) for pair, g in verified.items()})
        used = {n for pair in checked for n in pair}
        keypoints = {n: np.asarray(db.read_keypoints(ids[n]))[:, :2].astype(np.float64) for n in used}
    return {pair: verified[pair] for pair in sorted(checked)}, keypoints


def pair_consistency(rec, database) -> dict:
    """How well the poses of pycolmap.Reconstruction `rec` agree with the verified pairs in COLMAP `database`.

    Checked: each registered photo's PAIRS_PER_IMAGE strongest verified pairs with
    another registered photo (at least MIN_PAIR_INLIERS inlier matches; degenerate
    and watermark pairs left out). Each pair's relative pose is estimated from its
    inlier matches and the model's cameras (pycolmap.estimate_two_view_geometry_pose)
    and its rotation compared with the model's. Returns a JSON-able dict:
    pairs_checked, pairs_disagreeing (over PAIR_MAX_ROT_DEG), median_pair_deg,
    support {name: share of the photo's checked inliers in agreeing pairs; 1.0
    without a checked pair}, contradicted (names with support < IMAGE_MIN_SUPPORT,
    in name order) and worst_pairs ([name1, name2, degrees], the 10 largest).
    """
    import pycolmap

    images = {rec.images[i].name: rec.images[i] for i in rec.reg_image_ids()}
    pairs, keypoints = _read_pairs(database, set(images))
    total = dict.fromkeys(images, 0)
    agreeing = dict.fromkeys(images, 0)
    scored = []
    for (a, b), geom in pairs.items():
        matches = np.asarray(geom.inlier_matches)
        cam_a, cam_b = rec.cameras[images[a].camera_id], rec.cameras[images[b].camera_id]
        if not pycolmap.estimate_two_view_geometry_pose(cam_a, keypoints[a][matches[:, 0]], cam_b,
                                                        keypoints[b][matches[:, 1]], geom):
            continue  # no pose from this pair (e.g. no point in front of both cameras): no verdict
        model = images[b].cam_from_world().rotation.matrix() @ images[a].cam_from_world().rotation.matrix().T
        deg = float(rigid.rotation_error_deg(geom.cam2_from_cam1.rotation.matrix(), model))
        scored.append((deg, a, b))
        for name in (a, b):
            total[name] += len(matches)
            agreeing[name] += len(matches) * (deg <= PAIR_MAX_ROT_DEG)
    support = {n: (agreeing[n] / total[n] if total[n] else 1.0) for n in sorted(images)}
    scored.sort(reverse=True)
    return {
        "pairs_checked": len(scored),
        "pairs_disagreeing": sum(deg > PAIR_MAX_ROT_DEG for deg, _, _ in scored),
        "median_pair_deg": round(float(np.median([deg for deg, _, _ in scored])), 3) if scored else None,
        "support": {n: round(s, 3) for n, s in support.items()},
        "contradicted": [n for n, s in support.items() if s < IMAGE_MIN_SUPPORT],
        "worst_pairs": [[a, b, round(deg, 2)] for deg, a, b in scored[:10]],
    }
