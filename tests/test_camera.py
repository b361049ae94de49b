"""The pure-JAX camera: projection, colours, Lambert shading, motion."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vla_jax.envs import camera

SPEC = camera.CameraSpec(height=32, width=40, fovy=50.0, ambient=0.3, diffuse=0.7)
# Scene: a floor plane, a red sphere, a blue box, a green upright cylinder.
TYPES = np.array([camera.PLANE, camera.SPHERE, camera.BOX, camera.CYLINDER])
SIZES = np.array([[1.0, 1.0, 0.0], [0.05, 0, 0], [0.04, 0.04, 0.04], [0.03, 0.05, 0]], np.float32)
RGB = jnp.array([[0.5, 0.5, 0.5], [0.9, 0.1, 0.1], [0.1, 0.2, 0.9], [0.1, 0.8, 0.2]])
MATS = jnp.broadcast_to(jnp.eye(3), (4, 3, 3))
# Camera 0.8 m behind (-y) and 0.5 m above the origin, looking at the origin.
CAM_POS = np.array([0.0, -0.8, 0.5], np.float32)
_F = -CAM_POS / np.linalg.norm(CAM_POS)
_R = np.cross(_F, [0, 0, 1.0]) / np.linalg.norm(np.cross(_F, [0, 0, 1.0]))
CAM_MAT = np.stack([_R, np.cross(_R, _F), -_F], 1).astype(np.float32)   # columns right, up, back
LIGHT = jnp.array([0.0, 0.0, -1.0])   # straight down


@pytest.fixture(scope="module")
def render():
  fn = jax.jit(lambda pos: camera.render(TYPES, SIZES, pos, MATS, RGB, jnp.asarray(CAM_POS),
                                         jnp.asarray(CAM_MAT), LIGHT, SPEC))
  return fn


def _positions(sphere):
  return jnp.array([[0, 0, 0], sphere, [0.2, 0.1, 0.04], [-0.2, 0.1, 0.05]], jnp.float32)


def test_sphere_lands_on_projected_pixel_with_its_shaded_colour(render):
  sphere = np.array([0.05, 0.0, 0.05], np.float32)
  img = np.asarray(render(_positions(sphere)))
  assert img.shape == (32, 40, 3) and img.dtype == np.uint8
  row, col = camera.project(sphere, CAM_POS, CAM_MAT, SPEC)
  px = img[int(row), int(col)].astype(float) / 255
  # The centre pixel sees the sphere's front; its normal n points back to the camera, so the
  # shade is ambient + diffuse * max(0, n . up). Tolerance: 2/255 quantisation plus the pixel's
  # offset from the exact centre ray (< 0.05 in shade for a 5 cm sphere at this distance).
  n = (CAM_POS - sphere) / np.linalg.norm(CAM_POS - sphere)
  shade = SPEC.ambient + SPEC.diffuse * max(0.0, n[2])
  np.testing.assert_allclose(px, np.array([0.9, 0.1, 0.1]) * shade, atol=0.05)
  # The top of the sphere faces the light: brighter than the centre; the box is blue, the
  # cylinder green, the floor grey, and a pixel above the horizon is background.
  top = img[int(row) - 1, int(col)].astype(float) / 255   # 1 px up: still on the 2-px sphere
  assert top[0] > px[0] + 0.02 and top[0] > 4 * top[1]
  r, c = camera.project(np.array([0.2, 0.1, 0.08]), CAM_POS, CAM_MAT, SPEC)   # box top face
  np.testing.assert_allclose(img[int(r), int(c)] / 255, [0.1, 0.2, 0.9], atol=0.02)
  r, c = camera.project(np.array([-0.2, 0.1 - 0.03, 0.05]), CAM_POS, CAM_MAT, SPEC)  # cyl side
  assert img[int(r), int(c)][1] > 2 * max(img[int(r), int(c)][0], img[int(r), int(c)][2])
  r, c = camera.project(np.array([0.0, -0.3, 0.0]), CAM_POS, CAM_MAT, SPEC)   # floor
  np.testing.assert_allclose(img[int(r), int(c)] / 255, [0.5, 0.5, 0.5], atol=0.02)
  np.testing.assert_allclose(img[0, 0] / 255, SPEC.background, atol=0.01)


def test_image_changes_when_the_object_moves(render):
  a = np.asarray(render(_positions([0.05, 0.0, 0.05])))
  b = np.asarray(render(_positions([-0.05, 0.0, 0.05])))
  changed = np.any(a != b, -1)
  assert 10 < changed.sum() < 200   # the sphere moved, the rest of the image did not
  row, col = camera.project(np.array([-0.05, 0.0, 0.05]), CAM_POS, CAM_MAT, SPEC)
  is_red = lambda p: int(p[0]) > 3 * int(p[1])
  assert is_red(b[int(row), int(col)]) and not is_red(a[int(row), int(col)])


def test_vmap_over_a_batch_matches_single_renders(render):
  pos = jnp.stack([_positions([x, 0.0, 0.05]) for x in (-0.1, 0.0, 0.1)])
  batch = np.asarray(jax.vmap(render)(pos))
  assert batch.shape == (3, 32, 40, 3)
  np.testing.assert_array_equal(batch[2], np.asarray(render(pos[2])))


def test_unsupported_geom_type_is_rejected():
  with pytest.raises(ValueError, match="unsupported geom types"):
    camera.render(np.array([3]), SIZES[:1], jnp.zeros((1, 3)), MATS[:1], RGB[:1],
                  jnp.asarray(CAM_POS), jnp.asarray(CAM_MAT), LIGHT, SPEC)
