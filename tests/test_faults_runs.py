"""Runs that meet each other or the operating system: one run per output folder, temp files of crashed saves,
an output folder that cannot be written (RELIABILITY.md, items 3, 4 and 8)."""
import os
import signal
import subprocess
import sys

import pytest

import main_pretrain
from test_pretrain import ROOT, pretrain_args, read_log
from util.errors import UsageError

HOLD_LOCK = ("import sys, time; from util.output_lock import claim_output_dir\n"
             "with claim_output_dir(sys.argv[1], sys.argv[1]):\n"
             "    print('locked', flush=True); time.sleep(120)")


def test_second_run_in_one_output_dir_is_refused(image_folder, tmp_path):
    """While another process holds the folder, a run stops in one line naming it; once that process is killed
    (kill -9: no clean-up of its own), the stale lock file does not stand in the way."""
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(out)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(UsageError, match=rf"another run \(pid {holder.pid} on .*\) is writing to --output_dir"):
            main_pretrain.main(pretrain_args(image_folder, out, "--epochs", "1"))
        assert not (out / "log.txt").exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    main_pretrain.main(pretrain_args(image_folder, out, "--epochs", "1", "--vis_freq", "100"))
    assert len(read_log(out)) == 1


def test_stale_temp_files_are_removed_at_start(image_folder, tmp_path, capsys):
    """The .tmp-*.pth of a save killed before its rename go once the lock is held; nothing else is touched."""
    out = tmp_path / "run"
    out.mkdir()
    (out / ".tmp-k1ll3d.pth").write_bytes(b"\0" * 4096)
    (out / "notes.tmp").write_text("mine")
    main_pretrain.main(pretrain_args(image_folder, out, "--epochs", "1", "--vis_freq", "100"))
    assert not list(out.glob(".tmp-*")) and (out / "notes.tmp").read_text() == "mine"
    assert "removed 1 temp file(s) of an interrupted checkpoint save" in capsys.readouterr().out


def test_unwritable_output_dir_is_refused_before_model_and_data(tmp_path):
    """An --output_dir that cannot be created (here below a file: root writes anywhere) is one line, before the
    (missing) data is looked at."""
    (tmp_path / "a_file").write_text("")
    out = tmp_path / "a_file" / "run"
    with pytest.raises(UsageError, match=f"cannot write to {out} .*: pass an --output_dir"):
        main_pretrain.main(pretrain_args(tmp_path / "no_data", out, "--epochs", "1"))
    assert os.path.isfile(tmp_path / "a_file")
