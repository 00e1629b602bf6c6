"""User-facing errors keep their message and type across processes (Dask, Prefect)."""

import pickle

from tomopipe.errors import InputError, PathEscapeError


def test_input_error_names_source_where_and_fault():
    err = InputError("scan.h5", "missing dataset", where="/exchange/data")
    assert str(err) == "scan.h5: /exchange/data: missing dataset"


def test_errors_survive_pickling():
    for err in (InputError("scan.h5", "truncated", where="/exchange/data"),
                PathEscapeError("../etc/passwd", "outside the data roots", where="run abc")):
        back = pickle.loads(pickle.dumps(err))
        assert type(back) is type(err)
        assert str(back) == str(err)
        assert (back.source, back.fault, back.where) == (err.source, err.fault, err.where)
