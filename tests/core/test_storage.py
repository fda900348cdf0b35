"""Outputs at a URL, against a real S3-compatible server (moto) on 127.0.0.1 that the test starts:
files are staged locally and uploaded whole, a killed run resumes from the remote copy, and a bucket
URL is never mistaken for a local folder. Credentials and endpoint come only from the standard
AWS_* environment variables."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import check_rows_independently, run_in_process

from pipeline.cli import main
from pipeline.errors import ConfigError
from pipeline.jobs.config import load_run_config
from pipeline.jobs.report import summarise
from pipeline.outputs.destinations import Destination, OutputDir, write_text
from pipeline.search.methods import DEFAULT_METHODS

ROOT = Path(__file__).resolve().parents[2]  # the repository (this file is tests/core/)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3():
    """An S3-compatible server on 127.0.0.1 and a bucket; the AWS_* variables point at it."""
    pytest.importorskip("s3fs")
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    import boto3

    client = boto3.client("s3")
    client.create_bucket(Bucket="results")
    yield client, env
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    server.stop()


def remote_text(client, key: str) -> str:
    return client.get_object(Bucket="results", Key=key)["Body"].read().decode()


def test_a_file_is_staged_then_uploaded_whole_and_pulled_back(s3, tmp_path):
    client, _ = s3
    file = Destination("s3://results/unit/log.txt", tmp_path)
    assert not file.pull() and file.local.parent == tmp_path
    file.local.write_text("one\n")
    file.push()
    assert remote_text(client, "unit/log.txt") == "one\n"
    file.local.write_text("one\ntwo\n")  # not there until the next push
    assert remote_text(client, "unit/log.txt") == "one\n"
    file.push()
    elsewhere = Destination("s3://results/unit/log.txt", tmp_path / "b")
    (tmp_path / "b").mkdir()
    assert elsewhere.pull() and elsewhere.local.read_text() == "one\ntwo\n"
    write_text("s3://results/unit/report.json", '{"a": 1}\n')
    assert json.loads(remote_text(client, "unit/report.json")) == {"a": 1}


def test_local_paths_and_file_urls_are_written_in_place(tmp_path):
    folder = OutputDir(f"file://{tmp_path}/run")
    assert folder.staging == tmp_path / "run" and folder.file("x.txt").local == tmp_path / "run" / "x.txt"
    write_text(str(tmp_path / "out.json"), "{}\n")
    assert (tmp_path / "out.json").read_text() == "{}\n"


def test_an_unknown_protocol_is_a_config_error():
    with pytest.raises(ConfigError, match="nosuchfs://"):
        OutputDir("nosuchfs://bucket/run")


def test_replay_writes_its_report_to_a_bucket(s3, capsys):
    client, _ = s3
    assert main(["replay", "--world", "gaussian", "--prompts", "2", "--repeats", "2", "--budgets", "16",
                 "--methods", "bon", "--workers", "1", "--out", "s3://results/replay/report.json"]) == 0
    assert json.loads(remote_text(client, "replay/report.json"))["results"][0]["method"] == "bon"


@pytest.mark.ray
def test_a_run_killed_mid_way_resumes_from_the_bucket(s3, tmp_path):
    client, aws = s3
    env = {**os.environ, **aws}
    env.pop("RAY_ADDRESS", None)
    common = ["data.num_prompts=3", "budgets=[32,64]", "plot=false", "driver.max_concurrent_prompts=2",
              "driver.max_batch_rollouts=8", "generator.sim.latency_per_token_s=0.0002", "storage.checkpoint_interval_s=0"]
    expected = run_in_process(common)  # the undisturbed result (it depends on no Ray, replica or timing)
    check_rows_independently(expected, load_run_config(None, common).seed)  # a bug both runs share passes the comparison
    argv = [sys.executable, "-m", "pipeline.run", "run", "output_dir=s3://results/run1", *common]
    run = subprocess.Popen(argv, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           start_new_session=True)
    deadline = time.time() + 300
    uploaded = ""
    while len(uploaded.splitlines()) < 3:  # the checkpoints upload results as they come
        assert run.poll() is None, "the run ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.3)
        try:
            uploaded = remote_text(client, "run1/results.jsonl")
        except client.exceptions.NoSuchKey:
            pass
    os.killpg(run.pid, signal.SIGKILL)
    run.wait(timeout=60)
    kept = len(remote_text(client, "run1/results.jsonl").splitlines())
    assert kept < 3 * len(DEFAULT_METHODS) * 2, "the run finished before the kill"
    resumed = subprocess.run(argv, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=400)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"{kept} already done" in resumed.stderr
    rows = [json.loads(line) for line in remote_text(client, "run1/results.jsonl").splitlines()]
    fields = ("prompt_id", "method", "budget", "best_reward", "selected", "rollouts")
    assert sorted(tuple(r[f] for f in fields) for r in rows) == sorted(tuple(r[f] for f in fields) for r in expected)
    summary = json.loads(remote_text(client, "run1/summary.json"))
    assert summary["methods"] == summarise(expected, DEFAULT_METHODS, [32, 64])["methods"]
    assert "config.yaml" in {o["Key"].split("/")[-1] for o in client.list_objects_v2(Bucket="results")["Contents"]}
    assert not list(tmp_path.glob("s3*")), "a bucket URL became a local folder"


def test_sim_bank_writes_its_bank_to_a_bucket_not_to_a_local_folder(s3, tmp_path, monkeypatch):
    client, _ = s3
    monkeypatch.chdir(tmp_path)
    assert main(["sim-bank", "--family", "gaussian", "--prompts", "2", "--states", "2", "--completions", "3",
                 "--out", "s3://results/banks/b.jsonl"]) == 0
    assert [json.loads(line)["prompt_id"] for line in remote_text(client, "banks/b.jsonl").splitlines()] == ["p0", "p1"]
    assert list(tmp_path.iterdir()) == []  # it once wrote ./s3:/results/banks/b.jsonl


def test_a_whole_file_write_keeps_the_files_mode_its_links_and_writes_a_pipe_in_place(tmp_path):
    import stat
    import threading

    from pipeline.outputs.files import atomic_write_text

    kept = tmp_path / "kept.json"
    kept.write_text("old")
    kept.chmod(0o640)
    atomic_write_text(kept, "new")
    assert kept.read_text() == "new" and stat.S_IMODE(kept.stat().st_mode) == 0o640
    umask = os.umask(0o027)
    try:
        atomic_write_text(tmp_path / "fresh.json", "x")  # as open() would make it, not mkstemp's 0600
    finally:
        os.umask(umask)
    assert stat.S_IMODE((tmp_path / "fresh.json").stat().st_mode) == 0o640
    (tmp_path / "link.json").symlink_to(kept)
    atomic_write_text(tmp_path / "link.json", "through the link")
    assert (tmp_path / "link.json").is_symlink() and kept.read_text() == "through the link"
    fifo = tmp_path / "pipe"  # as /dev/stdout in a pipe: renaming over it would replace the pipe itself
    os.mkfifo(fifo)
    received = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_text()), daemon=True)
    reader.start()
    atomic_write_text(fifo, "streamed")
    reader.join(timeout=10)
    assert received == ["streamed"] and stat.S_ISFIFO(fifo.stat().st_mode)


@pytest.mark.parametrize("argv, match", [
    (["--out", "{tmp}"], "--out '{tmp}' is a folder; expected a file path"),
    (["--out", "{tmp}/new/"], "--out '{tmp}/new/' ends in '/', a folder; expected a file path"),
    (["--out", "{tmp}/afile/x.jsonl"], "--out '{tmp}/afile/x.jsonl' lies under '{tmp}/afile', which is a file"),
    (["--plot", "{tmp}"], "--plot '{tmp}' is a folder"),
    (["--plot", "{tmp}/p.xyz"], "must end in one of .avif, .eps"),
    (["--plot", "{tmp}/p"], "must end in one of"),  # matplotlib would write p.png, not p
    (["--plot", "s3://results/p.png"], "must be a local path"),
    (["--out", "nosuchfs://bucket/p.jsonl"], "cannot open 'nosuchfs://bucket/p.jsonl'"),
    (["--out", "{tmp}/ok.jsonl", "--plot", "{tmp}/afile/p.png"], "which is a file"),  # and no probe file left
    (["--out", "/proc/slg-out.jsonl"], "--out '/proc/slg-out.jsonl': cannot write in '/proc'"),  # refused even to root
    (["--out", "/sys/slg-out.jsonl"], "--out '/sys/slg-out.jsonl': cannot write in '/sys'"),
    (["--out", ""], "--out '' names no file"),  # it wrote nothing and exited 0
    (["--out", "-"], "--out '-' names no file (standard output is /dev/stdout)"),  # it wrote a file named -
    (["--out", "{tmp}/" + "a" * 300 + ".jsonl"], "File name too long"),  # exit 1 with a traceback
])
def test_an_output_path_that_cannot_be_written_is_refused_before_the_work(tmp_path, capsys, argv, match):
    (tmp_path / "afile").write_text("")
    rewards = ROOT / "data" / "real" / "examples" / "math500_first16.jsonl"
    argv = [a.format(tmp=tmp_path) for a in argv]
    assert main(["predict", "--rewards", str(rewards), "--n", "16", *argv]) == 2
    out, err = capsys.readouterr()
    assert match.format(tmp=tmp_path) in err and len(err.strip().splitlines()) == 1
    assert out == "" and sorted(p.name for p in tmp_path.iterdir()) == ["afile"]  # nothing printed, nothing written


def test_an_output_that_is_the_commands_input_is_refused_and_the_input_kept(tmp_path, capsys, monkeypatch):
    bank = tmp_path / "bank.jsonl"
    bank.write_bytes((ROOT / "data" / "toy_bank" / "bank.jsonl").read_bytes()[:200_000].rsplit(b"\n", 1)[0] + b"\n")
    kept = bank.read_bytes()
    monkeypatch.chdir(tmp_path)
    for argv in (["replay", "--bank", str(bank), "--budgets", "8", "--repeats", "1", "--out", "./bank.jsonl"],
                 ["predict", "--rewards", "bank.jsonl", "--n", "8", "--out", str(bank)],
                 ["convert-bank", str(bank), "bank.jsonl"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "is the input" in err and "writing it would replace it" in err and len(err.strip().splitlines()) == 1
        assert bank.read_bytes() == kept  # replay once wrote its results over the bank


def test_an_output_url_the_store_refuses_is_refused_before_the_work(tmp_path, capsys, monkeypatch):
    pytest.importorskip("s3fs")
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()  # fsspec reuses a file system made with another test's credentials
    rewards = ROOT / "data" / "real" / "examples" / "math500_first16.jsonl"
    try:
        assert main(["predict", "--rewards", str(rewards), "--n", "16", "--out", "s3://no-such-bucket-slg/p.jsonl"]) == 2
    finally:
        s3fs.S3FileSystem.clear_instance_cache()  # ... and the next test would reuse this one's, without any
    out, err = capsys.readouterr()
    assert "--out 's3://no-such-bucket-slg/p.jsonl': cannot reach it: NoCredentialsError" in err and out == ""


def test_an_output_url_in_a_bucket_that_does_not_exist_is_refused_before_the_work(s3, capsys):
    rewards = ROOT / "data" / "real" / "examples" / "math500_first16.jsonl"
    assert main(["predict", "--rewards", str(rewards), "--n", "16", "--out", "s3://no-such-bucket/p.jsonl"]) == 2
    out, err = capsys.readouterr()
    assert "--out 's3://no-such-bucket/p.jsonl': 'no-such-bucket' does not exist there" in err and out == ""


def test_outputs_in_folders_not_made_yet_are_written_and_stdout_gets_the_file_after_the_table(tmp_path, capsys):
    rewards = ROOT / "data" / "real" / "examples" / "math500_first16.jsonl"
    out, plot = tmp_path / "new" / "a" / "p.jsonl", tmp_path / "new" / "b" / "p.png"
    assert main(["predict", "--rewards", str(rewards), "--n", "16", "--out", str(out), "--plot", str(plot)]) == 0
    assert len(out.read_text().splitlines()) == 3 and plot.stat().st_size > 0
    capsys.readouterr()
    # through the process's own stdout: opened anew, a redirected file (>> log) would be truncated
    assert main(["predict", "--rewards", str(rewards), "--n", "16", "--out", "/dev/stdout"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("id ") and printed[-3:] == out.read_text().splitlines()


def test_devices_descriptors_and_pipes_are_written_in_place(tmp_path):
    from pipeline.outputs.files import written_in_place

    os.mkfifo(tmp_path / "pipe")
    (tmp_path / "file").write_text("")
    assert all(written_in_place(Path(p)) for p in ("/dev/null", "/dev/fd/3", "/proc/self/fd/1", tmp_path / "pipe"))
    assert not any(written_in_place(p) for p in (tmp_path / "file", tmp_path / "new.json"))


def test_collect_checks_its_texts_path_before_any_engine(tmp_path, capsys):
    assert main(["collect", "--texts", str(tmp_path), f"output_dir={tmp_path / 'o'}"]) == 2
    assert f"--texts {str(tmp_path)!r} is a folder" in capsys.readouterr().err


def test_a_run_whose_output_dir_cannot_be_a_folder_is_refused(tmp_path, capsys):
    (tmp_path / "afile").write_text("")
    for output in ("afile", "afile/sub"):
        assert main(["run", f"output_dir={tmp_path / output}", "data.num_prompts=1", "budgets=[8]"]) == 2
        assert "cannot be made a folder" in capsys.readouterr().err


def test_collect_shards_go_to_a_bucket_whole_and_a_rerun_reads_which_are_there(s3, tmp_path):
    import numpy as np

    from pipeline.jobs.bank_writers import ParquetShards
    from pipeline.jobs.collection import SampleRecorder, bank_row
    from pipeline.jobs.config import load_run_config
    from pipeline.jobs.prompts import load_prompts

    client, _ = s3
    sizes = ["collect.num_states=2", "collect.completions_per_state=4", "data.num_prompts=3", "collect.prompts_per_shard=2",
             "collect.out=s3://results/bank1"]
    config = load_run_config(None, sizes)
    results = run_in_process(sizes, SampleRecorder(False, np.float32), collect=True)
    prompts = load_prompts(config.data)
    with ParquetShards(config, prompts, bank_row) as writer:
        writer.write(results[:2])  # shard 0 whole; shard 1 waits for sim2
        staging = writer.folder.staging
    keys = [item["Key"] for item in client.list_objects_v2(Bucket="results", Prefix="bank1/")["Contents"]]
    assert keys == ["bank1/part-00000.parquet"] and not staging.exists()  # uploaded, nothing left on local disk
    again = ParquetShards(config, prompts, bank_row)  # its metadata read from the bucket
    assert [p.prompt_id for p in again.pending(prompts)] == ["sim2"]
    client.download_file("results", "bank1/part-00000.parquet", str(tmp_path / "part-00000.parquet"))
    from pipeline.offline.bank import read_bank_rows

    assert [r["prompt_id"] for r in read_bank_rows(tmp_path / "part-00000.parquet")] == ["sim0", "sim1"]


def test_an_output_link_is_checked_where_it_points(tmp_path, capsys):
    """The write replaces the file a chain of links ends at (atomic_write_text), so the probe is in that
    file's folder, not the link's: a link in a writable folder to one that refuses files is refused
    before the work."""
    link = tmp_path / "out.json"
    (tmp_path / "next.json").symlink_to("/sys/slg-out.json")
    link.symlink_to("next.json")  # relative, to a link: the folder is the last one's target's
    rewards = ROOT / "data" / "real" / "examples" / "math500_first16.jsonl"
    assert main(["predict", "--rewards", str(rewards), "--n", "16", "--out", str(link)]) == 2
    out, err = capsys.readouterr()
    assert f"--out {str(link)!r}: cannot write in '/sys'" in err and len(err.strip().splitlines()) == 1 and out == ""


def test_a_whole_file_write_that_fails_midway_leaves_the_old_file_whole(tmp_path, monkeypatch):
    """A reader sees the old file or the new one, never a truncated one: a text that cannot be
    encoded (a lone surrogate after a long first part), and a failure at the final rename, both
    leave the old content and no temporary file behind."""
    import pipeline.outputs.files as files

    target = tmp_path / "summary.json"
    target.write_text('{"old": true}\n')
    with pytest.raises(UnicodeEncodeError):
        files.atomic_write_text(target, '{"new": "' + "x" * 100_000 + "\ud800" + '"}\n')
    assert target.read_text() == '{"old": true}\n'

    def refuse(source, destination):
        raise OSError("disk full")

    monkeypatch.setattr(files.os, "replace", refuse)
    with pytest.raises(OSError, match="disk full"):
        files.atomic_write_text(target, '{"new": true}\n')
    assert target.read_text() == '{"old": true}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_an_upload_to_a_file_system_without_atomic_objects_ends_with_the_whole_file_at_the_target(tmp_path):
    """memory:// stands for such a file system (not an object store): the upload goes to a
    temporary name, then is moved to the target, which holds the whole file after each push."""
    import uuid

    import fsspec

    fs = fsspec.filesystem("memory")
    folder = f"/slg-test-{uuid.uuid4().hex}"
    try:
        file = Destination(f"memory://{folder}/results.jsonl", tmp_path)
        file.local.write_text('{"a": 1}\n')
        file.push()
        assert fs.cat_file(f"{folder}/results.jsonl") == b'{"a": 1}\n'
        file.local.write_text('{"a": 1}\n{"b": 2}\n')
        file.push()
        assert fs.cat_file(f"{folder}/results.jsonl") == b'{"a": 1}\n{"b": 2}\n'
        assert [p.rsplit("/", 1)[-1] for p in fs.ls(folder, detail=False)] == ["results.jsonl"]  # no temporary left
        elsewhere = Destination(f"memory://{folder}/results.jsonl", tmp_path / "b")
        (tmp_path / "b").mkdir()
        assert elsewhere.pull() and elsewhere.local.read_text() == '{"a": 1}\n{"b": 2}\n'
    finally:
        fs.rm(folder, recursive=True)


def test_banks_at_a_url_are_read_by_replay_curves_predict_and_convert(s3, tmp_path, capsys, monkeypatch):
    """`slg collect` writes shards to a bucket: the commands that read banks take the same URL (the
    bank is downloaded first, into a temporary folder removed afterwards) and answer as for a local copy."""
    import tempfile

    from pipeline.offline.bank import read_bank_rows, simulate_bank, write_bank
    from pipeline.offline.worlds import make_world

    client, _ = s3
    downloads = tmp_path / "tmp"
    downloads.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(downloads))
    rows = simulate_bank(make_world("bimodal"), num_prompts=4, num_states=3, num_completions=6, seed=2)
    local = tmp_path / "bank"
    local.mkdir()
    write_bank(local / "part-00000.parquet", rows[:2])
    write_bank(local / "part-00001.parquet", rows[2:])
    for part in ("part-00000.parquet", "part-00001.parquet"):
        client.upload_file(str(local / part), "results", f"shards/{part}")
    replay = ["replay", "--budgets", "8", "--methods", "bon,slg", "--repeats", "3", "--workers", "1", "--no-ceilings"]
    assert main(replay + ["--bank", str(local), "--out", str(tmp_path / "here.json")]) == 0
    assert main(replay + ["--bank", "s3://results/shards", "--out", str(tmp_path / "there.json")]) == 0
    here, there = (json.loads((tmp_path / name).read_text()) for name in ("here.json", "there.json"))
    assert there["source"] == "s3://results/shards"
    assert [{k: v for k, v in r.items() if k != "bank"} for r in there["results"]] == \
        [{k: v for k, v in r.items() if k != "bank"} for r in here["results"]]
    assert main(["convert-bank", "s3://results/shards", str(tmp_path / "copy.jsonl")]) == 0
    assert read_bank_rows(tmp_path / "copy.jsonl") == read_bank_rows(local)
    capsys.readouterr()
    assert main(["predict", "--rewards", "s3://results/shards/part-00001.parquet", "--n", "10", "--out",
                 str(tmp_path / "p.jsonl")]) == 0
    ids = [json.loads(line)["id"] for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert ids == [f"p{i}/s{k}" for i in (2, 3) for k in range(3)]
    assert main(["curves", "--bank", "s3://results/shards", "--m", "4", "--n", "8", "--repeats", "2"]) == 0
    assert main(["predict", "--rewards", "s3://results/nothing-here", "--n", "10"]) == 2
    assert "'s3://results/nothing-here' does not exist" in capsys.readouterr().err
    client.put_object(Bucket="results", Key="bad/b.jsonl", Body=b'{"prompt_id": "p", "states": [[1.0]]}\nnot json\n')
    assert main(["predict", "--rewards", "s3://results/bad/b.jsonl", "--n", "10"]) == 2
    assert "s3://results/bad/b.jsonl line 2" in capsys.readouterr().err  # the URL, not the deleted copy
    assert list(downloads.iterdir()) == []  # every download removed


@pytest.mark.parametrize("line, match", [
    (b"{not json", "line 2 is not JSON"),
    (b'{"prompt_id": "p\xff", "method": "bon", "budget": 8}', "line 2 is not JSON"),  # bytes that are not UTF-8
    (b"3", "line 2 is not an object with prompt_id, method, budget"),
    (b'{"prompt_id": "p"}', "line 2 is not an object with prompt_id, method, budget"),
])
def test_a_resumed_run_with_a_line_that_is_not_a_result_names_the_file_and_the_line(tmp_path, capsys, line, match):
    """A results.jsonl mended by hand, or hit by a disk error, is refused in one line before Ray starts,
    naming the line; the file is left as it is."""
    out = tmp_path / "out"
    config = load_run_config(None, [f"output_dir={out}", "data.num_prompts=1", "budgets=[8]"])
    out.mkdir()
    from pipeline.jobs.config import config_as_yaml
    (out / "config.yaml").write_text(config_as_yaml(config))
    data = b'{"prompt_id": "p", "method": "bon", "budget": 8}\n' + line + b"\n"
    (out / "results.jsonl").write_bytes(data)
    assert main(["run", f"output_dir={out}", "data.num_prompts=1", "budgets=[8]"]) == 2
    err = capsys.readouterr().err
    assert f"results.jsonl' {match}" in err and len(err.strip().splitlines()) == 1
    assert (out / "results.jsonl").read_bytes() == data


def test_an_output_in_an_input_folder_is_refused(tmp_path, capsys):
    """convert-bank of a folder of shards into that folder added a shard, and the bank then read
    its prompts twice (not consecutive)."""
    from pipeline.offline.bank import write_bank

    folder = tmp_path / "shards"
    rows = [{"prompt_id": "p0", "states": [[0.5, 1.0]]}]
    write_bank(folder / "part-0.parquet", rows)
    assert main(["convert-bank", str(folder), str(folder / "copy.parquet")]) == 2
    assert "lies in the input folder" in capsys.readouterr().err
    assert sorted(p.name for p in folder.iterdir()) == ["part-0.parquet"]
