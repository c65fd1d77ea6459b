import pytest
import torch

from gsvision.splats import Splats


def make(b=2, n=5, opac=False, counts=None):
    g = torch.Generator().manual_seed(0)
    means = torch.rand(b, n, 2, generator=g)
    chol = torch.rand(b, n, 3, generator=g) * 0.1 + 0.01
    colors = torch.rand(b, n, 3, generator=g)
    op = torch.rand(b, n, 1, generator=g) if opac else None
    return Splats.create(means, chol, colors, (32, 48), counts=counts, opacities=op)


def test_defaults_are_the_eight_number_form():
    s = make()
    assert s.opacities is None and s.numbers_per_gaussian == 8
    assert s.counts.tolist() == [5, 5]
    assert s.image_sizes.tolist() == [[32, 48], [32, 48]]
    assert make(opac=True).numbers_per_gaussian == 9


def test_unbatched_input_gets_a_batch_dimension():
    s = Splats.create(torch.rand(4, 2), torch.full((4, 3), 0.1), torch.rand(4, 3), (8, 8))
    assert s.batch_size == 1 and s.capacity == 4


@pytest.mark.parametrize(
    "field, index, value, message",
    [
        ("means", (1, 2, 0), float("nan"), "means: image 1, Gaussian 2 is not finite"),
        ("colors", (0, 4, 1), float("inf"), "colors: image 0, Gaussian 4 is not finite"),
        ("chol", (1, 0, 0), -0.1, "chol: image 1, Gaussian 0 is not positive-definite"),
        ("chol", (0, 3, 2), 0.0, "chol: image 0, Gaussian 3 is not positive-definite"),
    ],
)
def test_validation_names_field_image_and_gaussian(field, index, value, message):
    s = make()
    getattr(s, field)[index] = value
    with pytest.raises(ValueError, match=message):
        s.validate()


def test_validation_ignores_padded_slots_and_checks_shapes_and_counts():
    s = make(counts=[5, 2])
    s.means[1, 3] = float("nan")  # padding may hold anything
    s.validate()
    with pytest.raises(ValueError, match=r"chol: expected shape \[2, 5, 3\]"):
        Splats.create(s.means, s.chol[..., :2], s.colors, (4, 4))
    with pytest.raises(ValueError, match="counts: image 0 has count 9"):
        Splats.create(s.means, s.chol, s.colors, (4, 4), counts=[9, 1])
    with pytest.raises(ValueError, match="image_sizes: image 0"):
        Splats.create(s.means, s.chol, s.colors, (0, 4))
    op = torch.full((2, 5, 1), 1.5)
    c = make()
    with pytest.raises(ValueError, match="opacities: image 0, Gaussian 0 is outside"):
        Splats.create(c.means, c.chol, c.colors, (4, 4), opacities=op)


def test_indexing_slicing_and_to():
    s = make(b=3, counts=[5, 3, 1])
    one = s[1]
    assert one.batch_size == 1 and one.counts.tolist() == [3]
    assert torch.equal(one.means[0], s.means[1])
    assert s[-1].counts.tolist() == [1]
    assert s[1:].counts.tolist() == [3, 1]
    assert s[[2, 0]].counts.tolist() == [1, 5]
    with pytest.raises(IndexError):
        s[3]
    d = s.to(torch.float64)
    assert d.means.dtype == torch.float64 and d.counts.dtype == torch.int64
    assert s.image(1)["means"].shape == (3, 2)


def test_cat_pads_to_the_largest_capacity():
    a, b = make(b=1, n=3), make(b=2, n=5, counts=[5, 4])
    c = Splats.cat([a, b])
    assert c.capacity == 5 and c.counts.tolist() == [3, 5, 4]
    assert torch.equal(c.means[0, :3], a.means[0])
    assert (c.colors[0, 3:] == 0).all()
    c.validate()
    mixed = Splats.cat([make(b=1, opac=True), make(b=1)])
    assert mixed.opacities is None  # folded into colours


def test_fold_opacity_multiplies_colours():
    s = make(opac=True)
    f = s.fold_opacity()
    assert f.opacities is None
    assert torch.allclose(f.colors, s.colors * s.opacities)


@pytest.mark.parametrize("opac", [False, True])
def test_to_dict_round_trip_is_lossless(opac):
    s = make(opac=opac, counts=[5, 2])
    d = s.to_dict()
    r = Splats.from_dict(d)
    for name, t in s.fields().items():
        assert torch.equal(getattr(r, name), t)
    assert torch.equal(r.counts, s.counts) and torch.equal(r.image_sizes, s.image_sizes)


def test_from_dict_rejects_missing_and_unknown_fields():
    d = make().to_dict()
    with pytest.raises(ValueError, match=r"missing field\(s\) \['chol'\]"):
        Splats.from_dict({k: v for k, v in d.items() if k != "chol"})
    with pytest.raises(ValueError, match="unknown field"):
        Splats.from_dict({**d, "bogus": torch.zeros(1)})


def test_pixel_units_scale_with_the_raster():
    s = make()
    assert torch.allclose(s.pixel_means(10, 20), s.means * torch.tensor([20.0, 10.0]))
    assert torch.allclose(s.pixel_chol(10, 20), s.chol * torch.tensor([20.0, 10.0, 10.0]))
