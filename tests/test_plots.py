"""The CED figure: x axis in % of the normaliser, labelled, legend clear of the curves; the learning curve."""
import numpy as np
import pytest

from labfast.plots import ced_figure, learning_curve_figure


def test_ced_x_axis_is_in_percent_of_the_normaliser_and_the_legend_is_outside_the_axes():
    rng = np.random.default_rng(4)
    nmes = {"model": rng.gamma(4.0, 0.012, 100), "baseline": rng.gamma(4.0, 0.016, 100)}
    figure = ced_figure(nmes, threshold=0.10, normaliser="inter-ocular distance")
    axes, = figure.axes
    assert axes.get_xlim() == (0.0, 10.0)  # threshold 0.10 drawn as 10 %
    assert axes.get_xlabel() == "NME (% of the inter-ocular distance)"
    # the step curves run in % too: the largest x drawn is the largest NME x 100 (ced appends the threshold)
    first = axes.get_lines()[0].get_xdata()
    assert np.max(first) == np.float64(10.0) and 0 < np.min(first[first > 0]) < 10
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    legend = axes.get_legend().get_window_extent(renderer)
    assert not legend.overlaps(axes.get_window_extent(renderer))  # never hides a curve
    assert [text.get_text().split(":")[0] for text in axes.get_legend().get_texts()] == ["model", "baseline"]


def test_with_missed_faces_the_legend_means_the_found_faces_and_the_curve_counts_every_face():
    """Two faces at NME 4 % and 6 %, two missed (scored 1.0): the legend's NME is 5 % on 2 found, not
    the 52.5 % the stand-in value would make it; FR 50 % and the curve tops out at half the faces."""
    figure = ced_figure({"method": np.array([0.04, 1.0, 0.06, 1.0])}, missed_nme=1.0)
    axes, = figure.axes
    assert axes.get_legend().get_texts()[0].get_text() == "method: NME 5.00% on 2 found, FR 50.00%, AUC 0.250 (n=4)"
    assert axes.get_lines()[0].get_ydata().max() == 0.5


def test_learning_curve_draws_epoch_means_the_best_validation_epoch_and_the_lr_changes(tmp_path):
    """Three epochs, two logged steps each; the lr drops for epoch 2; validation is best at epoch 1."""
    rows = ["step,epoch,name,value"]
    for epoch, (losses, lr, nme) in enumerate([((0.4, 0.2), 1e-3, 0.09), ((0.1, 0.1), 1e-3, 0.05), ((0.05, 0.03), 1e-4, 0.06)]):
        rows += [f"{2 * epoch + i},{epoch},landmark,{loss}" for i, loss in enumerate(losses)]
        rows += [f"{2 * epoch + i},{epoch},lr,{lr}" for i in range(2)] + [f"{2 * epoch + 1},{epoch},val_nme,{nme}"]
    (tmp_path / "metrics.csv").write_text("\n".join(rows) + "\n")
    losses, validation = learning_curve_figure(tmp_path / "metrics.csv").axes
    landmark = losses.get_lines()[0]
    np.testing.assert_allclose(landmark.get_ydata(), [0.3, 0.1, 0.04])
    assert list(landmark.get_xdata()) == [0, 1, 2]
    nme, best = validation.get_lines()[:2]
    np.testing.assert_allclose(nme.get_ydata(), [9.0, 5.0, 6.0])
    assert list(best.get_xdata()) == [1] and "best: 5.00 % (epoch 1)" in validation.get_legend().get_texts()[1].get_text()
    # one dotted line at epoch 2 in each panel, where the lr changed
    dotted = [line for axes in (losses, validation) for line in axes.get_lines() if line.get_linestyle() == ":"]
    assert [list(line.get_xdata()) for line in dotted] == [[2, 2], [2, 2]]


def test_learning_curve_of_an_empty_metrics_file_names_the_file(tmp_path):
    (tmp_path / "metrics.csv").write_text("step,epoch,name,value\n")
    with pytest.raises(ValueError, match="metrics.csv holds no scalars yet"):
        learning_curve_figure(tmp_path / "metrics.csv")
