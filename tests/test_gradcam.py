"""Grad-CAM: maps land on the evidence, the frozen-CNN + linear-head path equals the network's own head,
and a run's report shows the maps of its worst and best test units."""

from __future__ import annotations

import numpy as np
import pytest

from tests._demo_stores import core_copy, demo_store

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SIDE = 32
SQUARE = 6


def _images(rng: np.random.Generator, n: int):
    """Every image: noise and a bright bar (a distractor) at random places; class 1 also has a bright square.

    Returns images (n, 3, S, S), labels (n,) and the square's mask (n, S, S) (all False for class 0).
    """
    x = rng.normal(0.2, 0.05, (n, SIDE, SIDE)).astype(np.float32)
    y = np.arange(n) % 2
    masks = np.zeros((n, SIDE, SIDE), bool)
    for i in range(n):
        r, c = rng.integers(0, SIDE - 2), rng.integers(0, SIDE - 12)
        x[i, r:r + 2, c:c + 12] = 0.9  # the bar: same brightness as the square, in both classes
        if y[i]:
            while True:
                r, c = rng.integers(0, SIDE - SQUARE, size=2)
                if not (x[i, r:r + SQUARE, c:c + SQUARE] > 0.5).any():
                    break
            x[i, r:r + SQUARE, c:c + SQUARE] = 0.9
            masks[i, r:r + SQUARE, c:c + SQUARE] = True
    return np.repeat(x[:, None], 3, axis=1), y, masks


def _square_detector():
    import torch
    from torch import nn

    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(32, 2),
    )


@pytest.fixture(scope="module")
def trained_detector():
    import torch

    rng = np.random.default_rng(0)
    x, y, _ = _images(rng, 256)
    model = _square_detector()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    X, Y = torch.from_numpy(x), torch.from_numpy(y)
    for _ in range(150):
        rows = torch.from_numpy(rng.choice(len(X), 32, replace=False))
        loss = torch.nn.functional.cross_entropy(model(X[rows]), Y[rows])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    return model


@pytest.mark.slow  # training the detector takes ~5-15 s on a shared 2-core machine
@pytest.mark.parametrize("method", ["gradcam", "gradcam++"])
def test_gradcam_puts_the_map_on_the_region_that_carries_the_class(trained_detector, method):
    import torch

    from extractors.gradcam import grad_cam, mass_in, module_forward

    x, y, masks = _images(np.random.default_rng(1), 64)
    with torch.no_grad():
        accuracy = float((trained_detector(torch.from_numpy(x)).argmax(1).numpy() == y).mean())
    assert accuracy > 0.9  # the network did learn the square, not the bar
    positive = np.flatnonzero(y == 1)
    maps = grad_cam(module_forward(trained_detector, "3"), x[positive], np.ones(len(positive), int), method=method)
    assert maps.shape == (len(positive), SIDE, SIDE) and maps.min() >= 0 and maps.max() <= 1
    grown = np.array([_dilate(m, 2) for m in masks[positive]])  # the map is at half resolution, upsampled
    shares = np.array([mass_in(cam, mask) for cam, mask in zip(maps, grown, strict=True)])
    area = grown.mean()
    # Grad-CAM++ spreads its weight over every position with a positive gradient: less concentrated
    assert np.median(shares) > (0.6 if method == "gradcam" else 0.3) > 3 * area, (np.median(shares), area)
    peaks = [np.unravel_index(cam.argmax(), cam.shape) for cam in maps]
    assert np.mean([mask[p] for mask, p in zip(grown, peaks, strict=True)]) > 0.8


@pytest.mark.slow
def test_gradcam_of_a_finetuned_network_lands_on_the_square_it_learned(tmp_path):
    """``fit finetune`` on images where only a bright square tells the class (an equally bright bar is in
    every image): Grad-CAM of class 'square' on the square images has its mass and its peak on the square."""
    from classifiers.finetune import FinetuneSettings, fit_finetune
    from extractors.gradcam import classifier_forward, grad_cam, mass_in, module_forward
    from extractors.timm_classifier import input_units, load_classifier, recipe_from_dict, unit_images
    from store.ingest import ingest_dataset
    from store.layout import open_store
    from store.runs import load_model
    from tests.test_finetune import _squares

    corners = _squares(tmp_path / "squares")
    store = open_store(tmp_path / "store")
    ingest_dataset(store, "squares", root=tmp_path / "squares", progress=False)
    side = 64
    report = fit_finetune(store, FinetuneSettings(model="test_resnet", weights="random", epochs=8, image_size=side,
                                                  batch_size=16, lr=3e-3), dataset="squares", progress=False, n_boot=0)
    assert report.seeds[0]["figures"]["test"]["accuracy"] >= 0.9
    state = load_model(store, report.run_id)
    network = load_classifier(state["model"], state["state_dict"], len(state["classes"]))
    units = input_units(store, "squares", input="image")
    read = unit_images(store, units, "image", recipe_from_dict(state["preprocess"]), progress=False)
    paths = np.array(units.column("path").to_pylist())[read.rows]
    chosen = [i for i, path in enumerate(paths) if path in corners][:24]
    scale, width = side / 40, int(np.ceil(8 * side / 40))
    masks = np.zeros((len(chosen), side, side), bool)  # the square, grown by half its width (map resolution)
    for j, i in enumerate(chosen):
        r, c = (int(v * scale) for v in corners[paths[i]])
        masks[j, max(0, r - width // 2):r + width + width // 2, max(0, c - width // 2):c + width + width // 2] = True
    targets = [state["classes"].index("square")] * len(chosen)
    area = masks.mean()
    # layer2 (8x8 at 64 px) and the last feature map (2x2, what the report shows: coarse, so a looser bound)
    for forward, share, on_peak in ((module_forward(network, "net.layer2"), 0.4, 0.8),
                                    (classifier_forward(network), 2 * area, 0.0)):
        maps = grad_cam(forward, read.images[chosen], targets)
        assert np.median([mass_in(m, k) for m, k in zip(maps, masks, strict=True)]) > share > area
        peaks = [k[np.unravel_index(m.argmax(), m.shape)] for m, k in zip(maps, masks, strict=True)]
        assert np.mean(peaks) >= on_peak  # a 2x2 map's peak is a corner of the upsampling: not checked


def _dilate(mask: np.ndarray, k: int) -> np.ndarray:
    from scipy.ndimage import binary_dilation

    return binary_dilation(mask, iterations=k)


def test_frozen_cnn_with_a_linear_head_explains_like_the_network_itself():
    """timm's ResNet head is a linear layer on the pooled embedding: reading that layer back from a
    scorer (as for a fitted logistic regression) and explaining through the frozen CNN gives the same maps."""
    import timm
    import torch

    from extractors.gradcam import affine_head, classifier_forward, embedding_forward, embedding_of, grad_cam
    from extractors.timm_classifier import Normalised

    torch.manual_seed(0)
    net = timm.create_model("test_resnet", pretrained=False, num_classes=3)
    network = Normalised(net, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)).eval()
    x = torch.rand(6, 3, 48, 48)
    W, b = net.fc.weight.detach().double().numpy(), net.fc.bias.detach().double().numpy()
    with torch.no_grad():
        anchors = embedding_of(network, "pooled", x)[1].double().numpy()
    head = affine_head(lambda X: X @ W.T + b, anchors)
    assert np.allclose(head.W, W, atol=1e-6) and np.allclose(head.b, b, atol=1e-6)
    targets = [0, 1, 2, 0, 1, 2]
    ours = grad_cam(embedding_forward(network, "pooled", head), x, targets)
    theirs = grad_cam(classifier_forward(network), x, targets)
    assert np.allclose(ours, theirs, atol=1e-4)
    assert (ours.reshape(6, -1).max(axis=1) > 0).sum() >= 3
    # an intermediate layer's embedding is its output averaged over space, as the CNN extractor stores it:
    # ResNet's last stage averaged is exactly its pooled embedding, so the maps agree too
    with torch.no_grad():
        assert torch.allclose(embedding_of(network, "layer4", x)[1], embedding_of(network, "pooled", x)[1], atol=1e-5)
    assert np.allclose(grad_cam(embedding_forward(network, "layer4", head), x, targets), ours, atol=1e-4)


def test_affine_head_refuses_a_model_that_is_not_linear():
    from extractors.gradcam import affine_head, centred_log_proba
    from features.errors import EvaluationError

    rng = np.random.default_rng(0)
    anchors = rng.normal(size=(5, 8))
    W = rng.normal(size=(2, 8))

    def softmax(X):
        z = X @ W.T
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    head = affine_head(centred_log_proba(softmax), anchors)  # logistic: its centred log-probabilities are linear
    assert np.allclose(head.W[1] - head.W[0], W[1] - W[0], atol=1e-5)
    with pytest.raises(EvaluationError, match="not a linear function"):
        affine_head(lambda X: np.tanh(X @ W.T), anchors)


@pytest.mark.slow
def test_reports_show_gradcam_maps_for_finetuned_and_linear_on_cnn_runs(tmp_path_factory, tmp_path):
    from classifiers.finetune import FinetuneSettings, fit_finetune
    from classifiers.fitting import FitRequest, fit
    from classifiers.report import write_report
    from extractors import create_extractor
    from extractors.runner import run_extraction

    store = core_copy(demo_store(tmp_path_factory, "chronomid"), tmp_path / "store")
    tuned = fit_finetune(store, FinetuneSettings(model="test_efficientnet", weights="random", epochs=1,
                                                 image_size=32), dataset="chronomid", progress=False, n_boot=0)
    run_extraction(create_extractor("cnn", model="test_efficientnet", weights="random", device="cpu", batch_size=64),
                   store, dataset="chronomid", progress=False)
    linear = fit(store, FitRequest(model="logistic", features="test_efficientnet_random", dataset="chronomid",
                                   progress=False, n_boot=0))
    for run_id, what in ((tuned.run_id, "fine-tuned test_efficientnet"), (linear.run_id, "frozen test_efficientnet")):
        page = write_report(store, run_id, out_dir=tmp_path / run_id)
        text = page.read_text()
        assert "<h2>Grad-CAM</h2>" in text and what in text and "not drawn" not in text
        for group in ("worst", "best"):
            image = tmp_path / run_id / f"gradcam_{group}_1.png"
            assert image.is_file() and f'src="gradcam_{group}_1.png"' in text
            from PIL import Image

            picture = np.asarray(Image.open(image))
            assert picture.shape[0] >= 192 and picture.shape[2] == 3
            left, right = picture[:, : picture.shape[1] // 2], picture[:, picture.shape[1] // 2:]
            assert not np.array_equal(left, right[:, : left.shape[1]])  # the overlay is coloured
