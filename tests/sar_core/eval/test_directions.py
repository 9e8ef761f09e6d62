"""One table says which way each metric is better, whatever prefix or suffix its key carries;
uncertainties and p-values have no direction."""
import pytest

from sar_core.eval.directions import better, directions_line


@pytest.mark.parametrize("key, expected", [
    ("fid", "lower"), ("cfg/1.5/select/fid", "lower"), ("headline/sar-tf/fid_diff", "lower"), ("cont/k2/fid", "lower"),
    ("is", "higher"), ("diff/sar-tf/is_diff", "higher"), ("precision", "higher"), ("compare/tf/recall", "higher"),
    ("loss/tf", "lower"), ("diag/tf/loss/s07", "lower"), ("diag/gap/sf", "lower"), ("diag/cal/acc_gap/ar", "lower"),
    ("tf/acc/s05", "higher"), ("diag/kl/s03", "lower"),
    ("fid_se", None), ("diff/sar-tf/fid_ci95", None), ("diff/sar-tf/fid_p_holm", None), ("diag/cal/temperature", None),
    ("weight/s07", None), ("step", None),
])
def test_every_key_gets_the_direction_of_its_metric(key, expected):
    assert better(key) == expected


def test_the_line_names_each_side():
    assert directions_line(["fid", "is", "precision", "recall"]) == "lower is better: fid; higher is better: is, precision, recall"
    assert directions_line(["fid"]) == "lower is better: fid"
