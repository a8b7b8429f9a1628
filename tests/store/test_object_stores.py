"""Inputs by URL (mmf_stream.store.object_stores) against a real S3 server and a real Dask cluster.

The S3 server is moto's server mode on 127.0.0.1 (tests/s3_server.py); the matrix and the means are
written to it as Zarr with s3fs; ``dask scheduler`` and ``dask worker`` processes (tests/dask_cluster.py)
get the same AWS_* environment as this process. Every result read from ``s3://`` is compared bit for
bit with the same data read from a local path.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import zarr
from zarr.storage import FsspecStore

import mmf_stream as ms
from mmf_stream import cli
from dask_cluster import REPO, assert_identical, local_cluster
from s3_server import s3_server_fixture

BUCKET = "mmf"
#: small inputs: a dense matrix in four chunks of rows, class means in four chunks
DENSE_SIZE, DENSE_CHUNK = 160, 48
MEANS_SHAPE, MEANS_CHUNK = (200, 12), 64

#: one moto_server for the module
s3 = s3_server_fixture("module", name="s3")


@pytest.fixture(scope="module")
def aws_env(s3):
    """This process's AWS_* environment pointed at the test server (as the workers' is)."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in s3.env.items():
            patch.setenv(name, value)
        yield s3.env


@pytest.fixture(scope="module")
def data(s3, aws_env, tmp_path_factory):
    """The same matrix and means as Zarr arrays in the bucket (written with s3fs) and in a local folder."""
    root = tmp_path_factory.mktemp("object-store-inputs")
    matrix = ms.hierarchical_covariance(DENSE_SIZE, seed=4)
    means = ms.class_means(*MEANS_SHAPE, seed=6)
    s3.filesystem().mkdir(BUCKET)
    options = {"endpoint_url": s3.endpoint, "key": "testing", "secret": "testing"}
    for name, values, chunks in (("C", matrix, (DENSE_CHUNK, DENSE_SIZE)), ("M", means, (MEANS_CHUNK, MEANS_SHAPE[1]))):
        for target, kwargs in ((f"s3://{BUCKET}/{name}.zarr", {"storage_options": options}), (str(root / f"{name}.zarr"), {})):
            zarr.create_array(target, shape=values.shape, chunks=chunks, dtype="f8", **kwargs)[:] = values
    assert s3.filesystem().exists(f"{BUCKET}/C.zarr/zarr.json")
    return {"matrix": matrix, "means": means, "root": root}


@pytest.fixture(scope="module")
def scheduler(s3, tmp_path_factory):
    """A scheduler and two workers on 127.0.0.1 whose environment points at the test server."""
    with local_cluster(tmp_path_factory.mktemp("cluster"), 2, env=s3.env) as address:
        yield address


@pytest.fixture
def client_reads(monkeypatch):
    """The keys this process reads through an fsspec store (the workers' reads are not counted)."""
    keys: list[str] = []
    original = FsspecStore.get

    async def get(self, key, *args, **kwargs):
        keys.append(key)
        return await original(self, key, *args, **kwargs)

    monkeypatch.setattr(FsspecStore, "get", get)
    return keys


def _chunk_keys(name: str, rows: int, chunk: int) -> set[str]:
    return {f"/{BUCKET}/{name}.zarr/c/{i}/0" for i in range(-(-rows // chunk))}


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("mmf-stream: error: ") and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("kind", ["matrix", "means"])
def test_cli_scheduler_reads_s3_on_the_workers_as_from_a_local_path(kind, s3, data, scheduler, client_reads,
                                                                    tmp_path, capsys):
    name, rows, chunk = ("C", DENSE_SIZE, DENSE_CHUNK) if kind == "matrix" else ("M", MEANS_SHAPE[0], MEANS_CHUNK)
    before = len(s3.requests("GET"))

    def run(source: str, out: str) -> ms.Factorization:
        given = [source] if kind == "matrix" else ["--means", source]
        code = cli.main(["factorize", *given, "--order", "4", "--schedule", "staged", "--scheduler", scheduler,
                         "--out", str(tmp_path / out), "--quiet"])
        assert code == 0, capsys.readouterr().err
        return ms.load(tmp_path / out)

    from_s3 = run(f"s3://{BUCKET}/{name}.zarr", "s3.zarr")
    # every chunk was fetched from the server, and none by this process: the workers read them
    fetched = set(s3.requests("GET")[before:])
    assert _chunk_keys(name, rows, chunk) <= fetched, sorted(fetched)
    assert client_reads and not [key for key in client_reads if key.startswith("c/")], client_reads
    from_local = run(str(data["root"] / f"{name}.zarr"), "local.zarr")
    assert_identical(from_local, from_s3)
    here = ms.factorize(data["matrix"], order=4, schedule="staged") if kind == "matrix" else \
        ms.factorize(means=data["means"], order=4, schedule="staged")
    assert_identical(here, from_s3)


def test_storage_options_instead_of_the_environment(s3, data, scheduler, monkeypatch, tmp_path, capsys):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name)
    options = {"endpoint_url": s3.endpoint, "key": "testing", "secret": "testing"}
    # the API, on the cluster (the array travels to the workers with its filesystem's options)
    on_dask = ms.factorize(means=f"s3://{BUCKET}/M.zarr", order=4, schedule="staged", client=scheduler,
                           storage_options=options)
    assert_identical(ms.factorize(means=data["means"], order=4, schedule="staged"), on_dask)
    # the API and the CLI without a cluster: read here
    expected = ms.factorize(data["matrix"], order=4)
    assert_identical(expected, ms.factorize(f"s3://{BUCKET}/C.zarr", order=4, storage_options=options))
    out = tmp_path / "r.zarr"
    code = cli.main(["factorize", f"s3://{BUCKET}/C.zarr", "--order", "4", "--out", str(out), "--quiet",
                     "--storage-option", f"endpoint_url={s3.endpoint}", "--storage-option", "key=testing",
                     "--storage-option", "secret=testing"])
    assert code == 0, capsys.readouterr().err
    assert_identical(expected, ms.load(out))
    # without the options (and without the environment) the server is not found: one line, nothing written
    with pytest.raises(ValueError, match=r"^s3://mmf/C\.zarr: "):
        ms.factorize(f"s3://{BUCKET}/C.zarr", order=4, storage_options={**options, "endpoint_url": "http://127.0.0.1:9",
                                                                       "config_kwargs": {"retries": {"max_attempts": 1}}})
    with pytest.raises(ValueError, match="storage option not accepted"):
        ms.factorize(f"s3://{BUCKET}/C.zarr", storage_options={**options, "no_such_option": 1})
    with pytest.raises(ValueError, match="applies to a matrix or means given by URL"):
        ms.factorize(data["matrix"], storage_options=options)
    with pytest.raises(TypeError, match="storage_options must be a mapping"):
        ms.factorize(f"s3://{BUCKET}/C.zarr", storage_options=["endpoint_url"])


def test_cli_bad_urls_are_one_line_and_write_nothing(s3, data, scheduler, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "r.zarr"

    def factorize(*given: str) -> int:
        return cli.main(["factorize", *given, "--schedule", "staged", "--scheduler", scheduler, "--out", str(out)])

    assert factorize("s3://no-such-bucket/C.zarr") == 2
    assert "s3://no-such-bucket/C.zarr: the bucket 'no-such-bucket' does not exist" in _one_line_error(capsys)
    assert factorize("--means", f"s3://{BUCKET}/missing.zarr") == 2
    assert f"s3://{BUCKET}/missing.zarr: no such object" in _one_line_error(capsys)
    assert factorize(f"s3://{BUCKET}") == 2
    assert "not a Zarr array" in _one_line_error(capsys)
    assert factorize(f"s3://{BUCKET}/C.zarr", "--storage-option", "no_such_option=1") == 2
    assert "storage option not accepted" in _one_line_error(capsys)
    assert factorize(str(data["root"] / "C.zarr"), "--storage-option", "anon=true") == 2
    assert "--storage-option applies to an INPUT or --means given by URL" in _one_line_error(capsys)
    assert not out.exists()
    # results are written to local directories only: no "s3:" folder appears here
    code = cli.main(["factorize", f"s3://{BUCKET}/C.zarr", "--scheduler", scheduler, "--out", f"s3://{BUCKET}/r.zarr"])
    assert code == 2 and "results are written to a local directory" in _one_line_error(capsys)
    assert not (tmp_path / "s3:").exists()
    with pytest.raises(SystemExit) as raised:
        factorize(f"s3://{BUCKET}/C.zarr", "--storage-option", "endpoint_url")
    assert raised.value.code == 2 and "expected KEY=VALUE" in capsys.readouterr().err


def test_a_worker_that_cannot_read_its_rows_is_one_line(s3, data, scheduler, tmp_path, capsys):
    url = f"s3://{BUCKET}/broken.zarr"
    options = {"endpoint_url": s3.endpoint, "key": "testing", "secret": "testing"}
    zarr.create_array(url, shape=(DENSE_SIZE, DENSE_SIZE), chunks=(DENSE_CHUNK, DENSE_SIZE), dtype="f8",
                      storage_options=options)[:] = data["matrix"]
    s3.filesystem().pipe(f"{BUCKET}/broken.zarr/c/1/0", b"not a compressed chunk")  # the workers meet it
    out = tmp_path / "r.zarr"
    code = cli.main(["factorize", url, "--schedule", "staged", "--scheduler", scheduler, "--out", str(out)])
    err = _one_line_error(capsys)
    assert code == 2 and f"a Dask worker cannot read rows {DENSE_CHUNK}:{2 * DENSE_CHUNK} of {url}" in err
    assert not out.exists()


def test_missing_s3fs_is_one_line(tmp_path):
    """Without s3fs an s3:// input is refused before any scheduler is contacted, naming the extra."""
    script = ("import sys; sys.modules['s3fs'] = None\n"
              "from mmf_stream import cli\n"
              "raise SystemExit(cli.main(sys.argv[1:]))\n")
    done = subprocess.run([sys.executable, "-c", script, "factorize", f"s3://{BUCKET}/C.zarr", "--scheduler",
                           "tcp://127.0.0.1:9", "--out", str(tmp_path / "r.zarr")],
                          cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and "s3fs" in done.stderr and "mmf_stream[s3]" in done.stderr, done.stderr
    assert "cannot reach the Dask scheduler" not in done.stderr


def test_urls_and_storage_options_are_parsed():
    from mmf_stream.cli.arguments import storage_option
    from mmf_stream.store.object_stores import is_url, url_scheme

    assert is_url("s3://bucket/C.zarr") and is_url("file:///tmp/C.zarr") and url_scheme("S3://b/x") == "s3"
    assert not is_url("/tmp/C.zarr") and not is_url("C.zarr") and not is_url(None) and not is_url("a b://x")
    assert storage_option("endpoint_url=http://127.0.0.1:9000") == ("endpoint_url", "http://127.0.0.1:9000")
    assert storage_option("anon=true") == ("anon", True)
    assert storage_option('client_kwargs={"region_name": "eu-west-1"}') == ("client_kwargs", {"region_name": "eu-west-1"})
    assert storage_option("key=") == ("key", "")
