"""Which samples the fields are evaluated on: empty-space skipping with a fixed sample budget, and
differentiating only every m-th ray.

`skip_empty` (ModelConfig.skip_threshold / sample_budget) and `grad_on_every`
(ModelConfig.prop_grad_fraction) are used by nerflib.models' NerfModel; shapes as there.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from nerflib.model_config import ModelConfig


def grad_on_every(m, fn, *args):
    """fn(*args), differentiable only through every m-th entry of the leading axis.

    The other entries are computed under stop_gradient, so JAX never builds
    their backward pass. Rays are picked by stride, not as a leading block, so
    a batch sharded over devices keeps the same work on every device. A leading
    axis that m does not divide is differentiated whole.
    """
    n = args[0].shape[0]
    if n % m:
        return fn(*args)
    k = n // m
    grouped = [a.reshape(k, m, *a.shape[1:]) for a in args]
    live = fn(*(g[:, 0] for g in grouped))
    frozen = fn(*(g[:, 1:].reshape(n - k, *g.shape[2:]) for g in grouped))

    def interleave(y, z):
        z = jax.lax.stop_gradient(z).reshape(k, m - 1, *z.shape[1:])
        return jnp.concatenate([y[:, None], z], axis=1).reshape(n, *y.shape[1:])

    return jax.tree.map(interleave, live, frozen)


# Rays are packed in this many groups (or a multiple: one or more per device), so that the
# packing, hence the result, is the same on 1, 2, 4 or 8 devices.
PACK_GROUPS = 8


def skip_empty(field, cfg: ModelConfig, bound, means, covs, viewdirs, glo_vec, *, pack: bool):
    """The final field where the proposal bound `bound` [..., n] reaches cfg.skip_threshold.

    Returns (density [..., n], rgb [..., n, 3], live [..., n], fits [...]):
    zero density and colour where a sample is skipped; `live` marks the
    samples the field was evaluated on, `fits` the rays rendered in full.

    With `pack` and cfg.sample_budget < 1 (training), the live samples are
    packed into a static-size set (sample_budget of all samples) and the field
    runs on that set only, so a step's cost is fixed. As instant-ngp fixes the
    samples per batch and varies the rays, a batch whose live samples do not
    all fit keeps whole rays in order while they fit; the rays left over
    (`fits` False) have no live samples and must be left out of the loss.
    Packing works in groups of rays (8, or a multiple of the device count,
    when the rays split evenly), so a batch sharded along its rays packs
    locally on each device and the result does not depend on the device count.
    Without `pack`, every sample is evaluated and the skipped ones are zeroed.
    """
    live = bound >= cfg.skip_threshold
    batch, n = bound.shape[:-1], bound.shape[-1]
    if not pack or cfg.sample_budget >= 1.0:
        density, rgb = field(means, covs, viewdirs, glo_vec)
        fits = jnp.ones(batch, bool)
        return jnp.where(live, density, 0.0), jnp.where(live[..., None], rgb, 0.0), live, fits
    num_rays = int(np.prod(batch))
    groups = math.lcm(PACK_GROUPS, jax.device_count())
    if num_rays % groups:
        groups = 1
    size = num_rays // groups * n  # samples per group
    budget = min(size, -(-int(np.ceil(cfg.sample_budget * size)) // 8) * 8)

    live = live.reshape(groups, num_rays // groups, n)
    fits = jnp.cumsum(jnp.sum(live, axis=-1, dtype=jnp.int32), axis=-1) <= budget  # [groups, rays]
    live = (live & fits[..., None]).reshape(groups, size)
    slot = jnp.where(live, jnp.cumsum(live, axis=-1, dtype=jnp.int32) - 1, budget)  # `budget`: discarded
    # Sample index of every slot; unused slots point past the end (clamped below, then unused).
    source = jax.vmap(lambda s: jnp.full((budget,), size, jnp.int32).at[s].set(
        jnp.arange(size, dtype=jnp.int32), mode="drop"))(slot)
    source = jnp.minimum(source, size - 1)
    ray = source // n

    def take(x, idx):  # x [groups, count, F...], idx [groups, budget] -> [groups, budget, F...]
        return jax.vmap(lambda a, i: a[i])(x, idx)

    def per_sample(x):  # [..., n, F...] -> [groups, budget, 1, F...]
        return take(x.reshape(groups, size, *x.shape[len(batch) + 1:]), source)[:, :, None]

    def per_ray(x):  # [..., F] -> [groups, budget, F]
        return take(x.reshape(groups, size // n, *x.shape[len(batch):]), ray)

    density, rgb = field(per_sample(means), per_sample(covs), per_ray(viewdirs),
                         None if glo_vec is None else per_ray(glo_vec))

    def unpack(y):  # [groups, budget, 1, F...] -> [..., n, F...], zero where skipped
        y = jnp.concatenate([y[:, :, 0], jnp.zeros_like(y[:, :1, 0])], axis=1)  # the discarded slot
        return take(y, slot).reshape(*batch, n, *y.shape[2:])

    return unpack(density), unpack(rgb), live.reshape(*batch, n), fits.reshape(batch)
