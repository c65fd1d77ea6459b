"""Fixtures for the rasteriser tests; the cases themselves live in raster_cases.py."""

import pytest
from raster_cases import random_splats


@pytest.fixture
def make_splats():
    return random_splats
