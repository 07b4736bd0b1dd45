"""Score audio files with a trained system, outside its experiment folder (scoring.system.SASVSystem).

  python score_files.py --model exp_result/demo/weights/best.ckpt \
      --enroll alice=a1.flac,a2.flac --enroll bob=b1.flac --test t1.flac t2.flac
scores every --test file against every enrolled speaker; with --trials FILE (lines `speaker path`) and
--enroll_list FILE (lines `speaker path [path ...]`; a speaker on several lines gets all of them) only the
listed pairs. A CM alone needs only --test (speaker `-`). Relative paths are taken from the current folder.

Output (stdout, or --out FILE written atomically), tab-separated with a header:
  speaker  file  asv_score  cm_score  sasv_score  decision  [asv_llr  cm_llr  sasv_llr with --llr]
`-` for a score the system lacks; decision accept / reject from calibration.json beside the checkpoint
(`-` without one). What each score means: docs/scores.md.

A bad audio file or an unknown speaker is one warning line on stderr and its trials are left out (a bad
enrollment file is dropped; a speaker left with none is unknown). Exit status: 0 when every trial was scored,
1 when some were left out (the others are written), 2 for bad input that stops the run (arguments, model).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from data.protocols import read_fields
from runtime.cli import run_cli
from runtime.errors import UserError
from runtime.files import check_output_place, write_text
from scoring.score_files import format_score
from scoring.system import SASVSystem, TrialScore

COLUMNS = ("speaker", "file", "asv_score", "cm_score", "sasv_score", "decision")
LLR_COLUMNS = ("asv_llr", "cm_llr", "sasv_llr")


class ListFileError(UserError):
    """A --enroll, --enroll_list or --trials entry that cannot be used."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="the system's checkpoint (weights/best.ckpt, AASIST .pth, ...)")
    parser.add_argument("--config", help="replaces the checkpoint's stored config (needed for weights without one "
                                         "whose settings are not the defaults)")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or auto")
    parser.add_argument("--asv_model", help="ASV weights for a checkpoint without them (a _fixed back-end, b2)")
    parser.add_argument("--cm_model", help="CM weights for a checkpoint without them (a _fixed back-end, b2)")
    parser.add_argument("--calibration", default="auto",
                        help="auto (calibration.json beside --model), a calibration file, or none")
    parser.add_argument("--enroll", action="append", default=[], metavar="SPEAKER=FILE[,FILE...]",
                        help="enroll a speaker (repeat for more speakers)")
    parser.add_argument("--enroll_list", help="lines `speaker path [path ...]`")
    parser.add_argument("--test", nargs="+", action="extend", default=[], metavar="FILE",
                        help="files scored against every enrolled speaker")
    parser.add_argument("--trials", help="lines `speaker path`: only these pairs are scored")
    parser.add_argument("--enrollment_samples", type=int, help="enrollment crop in samples (default: the config's "
                                                               "enrollment_samples.eval; b2: test_samples)")
    parser.add_argument("--batch_size", type=int, help="files per batch (default: the config's eval_batch_size)")
    parser.add_argument("--out", help="write the table here (atomically) instead of stdout")
    parser.add_argument("--llr", action="store_true", help="add the asv_llr, cm_llr and sasv_llr columns")
    args = parser.parse_args(argv)
    if bool(args.test) == bool(args.trials):
        parser.error("give either --test or --trials")
    return args


def enrollments(args: argparse.Namespace) -> dict[str, list[str]]:
    """speaker -> enrollment files, from --enroll and --enroll_list (a speaker named again gets more files)."""
    files: dict[str, list[str]] = {}
    for text in args.enroll:
        speaker, _, paths = text.partition("=")
        names = [path for path in paths.split(",") if path]
        if not speaker or not names:
            raise ListFileError(f"--enroll {text!r}: expected SPEAKER=FILE[,FILE...]")
        files.setdefault(speaker, []).extend(names)
    if args.enroll_list:
        for number, fields in read_fields(args.enroll_list, "enrollment list"):
            if len(fields) < 2:
                raise ListFileError(f"{args.enroll_list}:{number}: expected `speaker path [path ...]`")
            files.setdefault(fields[0], []).extend(fields[1:])
    return files


def trial_pairs(args: argparse.Namespace, speakers: list[str], kind: str) -> list[tuple[str | None, str]]:
    if args.trials:
        pairs = []
        for number, fields in read_fields(args.trials, "trial list"):
            if len(fields) != 2:
                raise ListFileError(f"{args.trials}:{number}: expected `speaker path`, got {len(fields)} fields")
            pairs.append((fields[0], fields[1]))
        return pairs
    if kind == "cm":
        return [(None, path) for path in args.test]
    return [(speaker, path) for speaker in speakers for path in args.test]


def _cell(value: float | None) -> str:
    return "-" if value is None else format_score(value)


def table(scores: list[TrialScore], llr: bool) -> str:
    header = COLUMNS + (LLR_COLUMNS if llr else ())
    lines = ["\t".join(header)]
    for score in scores:
        decision = "-" if score.decision is None else "accept" if score.decision else "reject"
        row = [score.speaker or "-", score.test, _cell(score.asv_score), _cell(score.cm_score),
               _cell(score.sasv_score), decision]
        if llr:
            row += [_cell(score.asv_llr), _cell(score.cm_llr), _cell(score.sasv_llr)]
        lines.append("\t".join(row))
    return "\n".join(lines) + "\n"


def main() -> int:
    args = parse_args()
    problems: list[str] = []

    def warn(text: str) -> None:
        problems.append(text)
        print(text, file=sys.stderr, flush=True)

    files = enrollments(args)  # every list read, and the output place checked, before the model is loaded
    listed = trial_pairs(args, list(files), "") if args.trials else None
    if args.out:
        check_output_place(Path(args.out), "--out", folder=False)
    system = SASVSystem.load(args.model, config=args.config, device=args.device, asv_weights=args.asv_model,
                             cm_weights=args.cm_model,
                             calibration=None if args.calibration == "none" else args.calibration,
                             batch_size=args.batch_size, enrollment_samples=args.enrollment_samples, warn=warn)
    calibration_warnings = len(problems)  # a missing calibration is not a skipped trial
    if files and system.kind == "cm":
        raise ListFileError(f"{args.model} is a CM alone: it takes no speakers; drop --enroll / --enroll_list")
    if not files and system.kind != "cm":
        raise ListFileError(f"{args.model} is a {system.kind} system: its trials need speakers; give --enroll or "
                            f"--enroll_list")
    pairs = listed if listed is not None else trial_pairs(args, list(files), system.kind)
    for speaker, paths in files.items():
        system.enroll(speaker, paths, on_bad_audio="skip")
    scores = system.score_trials(pairs, on_problem="skip")
    text = table(scores, args.llr)
    if args.out:
        write_text(Path(args.out), text)
    else:
        sys.stdout.write(text)
    return 1 if len(problems) > calibration_warnings or len(scores) < len(pairs) else 0


if __name__ == "__main__":
    run_cli(main)
