"""PGD: adversarial examples stay in their ball and box, and hurt more than random noise of the same norm."""

import pytest
import torch

from intrs.attacks import pgd, project, to_pixel_grid
from intrs.checkpoint import load_checkpoint
from intrs.data import load_dataset


@pytest.fixture(scope="module")
def digits_model_and_data(digits_checkpoint):
    model = load_checkpoint(digits_checkpoint).model.eval()
    data = load_dataset("digits", "test").subset(200)
    return model, data.images, data.labels


def accuracy(model, pixels, labels):
    with torch.no_grad():
        return float((model(pixels.float() / 255).argmax(1) == labels).float().mean())


@pytest.mark.parametrize("norm,eps", [("linf", 0.03), ("linf", 0.1), ("l2", 0.5), ("l2", 1.0)])
def test_adversarial_examples_stay_in_their_ball_and_box(digits_model_and_data, norm, eps):
    model, pixels, labels = digits_model_and_data
    clean = pixels.float() / 255
    adversarial = pgd(model, clean, labels, eps, norm, steps=10, generator=torch.Generator().manual_seed(0))
    on_grid = to_pixel_grid(adversarial, pixels, eps, norm)
    for x in (adversarial, on_grid.float() / 255):
        delta = (x - clean).flatten(1)
        size = delta.abs().max(dim=1).values if norm == "linf" else delta.norm(dim=1)
        assert float(size.max()) <= eps * (1 + 1e-5)
        assert float(x.min()) >= 0 and float(x.max()) <= 1
    assert on_grid.dtype == torch.uint8


@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 1.5)])
def test_pgd_hurts_at_least_as_much_as_random_noise_of_the_same_norm(digits_model_and_data, norm, eps):
    model, pixels, labels = digits_model_and_data
    clean = pixels.float() / 255
    generator = torch.Generator().manual_seed(1)
    attacked = to_pixel_grid(pgd(model, clean, labels, eps, norm, steps=10, generator=generator), pixels, eps, norm)
    if norm == "linf":
        noise = (torch.randint(0, 2, clean.shape, generator=generator) * 2 - 1) * eps
    else:
        direction = torch.randn(clean.shape, generator=generator)
        noise = direction / direction.flatten(1).norm(dim=1).view(-1, 1, 1, 1) * eps
    random = to_pixel_grid(clean + project(noise, clean, eps, norm), pixels, eps, norm)
    assert accuracy(model, attacked, labels) < accuracy(model, random, labels)
    assert accuracy(model, attacked, labels) < accuracy(model, pixels, labels)


def test_zero_eps_leaves_images_unchanged(digits_model_and_data):
    model, pixels, labels = digits_model_and_data
    clean = pixels.float() / 255
    assert torch.equal(to_pixel_grid(pgd(model, clean, labels, 0.0, "l2", 5), pixels, 0.0, "l2"), pixels)
