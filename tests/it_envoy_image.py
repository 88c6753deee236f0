"""`make envoy-image` (scripts/envoy_image.py): the image depends on what its files hold, not on
when or how they were installed, and `docker load` keeps it as built."""

import os
import shutil

import pytest

import engine
import envoy_image
import run


@pytest.fixture(scope="module")
def built():
    return envoy_image.image_archive()


def it_envoy_image_depends_on_file_contents_not_their_dates_or_modes(built, tmp_path):
    copy = tmp_path / "envoy"
    shutil.copyfile(run.envoy_binary(), copy)
    os.chmod(copy, 0o700)
    os.utime(copy, (1_000_000_000, 1_000_000_000))
    image_id, archive = envoy_image.image_archive(str(copy))
    assert image_id == built[0]
    assert archive == built[1], "same ID but other bytes: something outside the config varies"


def it_envoy_image_loaded_by_docker_has_the_id_it_was_built_with(built):
    if engine.IMAGE != envoy_image.TAG:
        pytest.skip(f"ENVOY_IMAGE is {engine.IMAGE}, not the local image")
    why = engine.problem()
    if why:
        pytest.skip(why)
    assert envoy_image.loaded_id() == built[0], "the image here is not this build: `make envoy-image`"
    r = engine.docker("run", "--rm", "--pull", "never", envoy_image.TAG, "envoy", "--version")
    assert r.returncode == 0 and "/1.40.0/" in r.stdout, r
