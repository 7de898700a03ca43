"""Annotation parsing (folders, name/index lists, UCF101 1-based lists + classInd.txt) and splits."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from actionflow.annotations import (
    AnnotationError,
    Sample,
    load_splits,
    read_class_index,
    scan_folder,
    stratified_split,
)


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def test_folder_per_class_sorted_names_and_labels(tmp_path):
    for name in ("waltz", "tango", "salsa"):
        for i in range(2):
            touch(tmp_path / name / f"{name}{i}.mp4")
    touch(tmp_path / "tango" / "notes.txt")  # not a video: ignored
    samples, classes = scan_folder(tmp_path)
    assert classes == ["salsa", "tango", "waltz"]
    got = {Path(s.path).name: s.label for s in samples}
    assert got == {"salsa0.mp4": 0, "salsa1.mp4": 0, "tango0.mp4": 1, "tango1.mp4": 1, "waltz0.mp4": 2, "waltz1.mp4": 2}
    assert all(Path(s.path).is_absolute() for s in samples)


def test_empty_folder_is_a_clear_error(tmp_path):
    (tmp_path / "a").mkdir()
    with pytest.raises(AnnotationError, match="no videos"):
        scan_folder(tmp_path)


def test_lists_with_class_names_and_zero_based_indices(tmp_path):
    (tmp_path / "train.txt").write_text("v/a1.mp4 spin\nv/b1.mp4 jump\n\n# comment\nv/a2.mp4 spin\n")
    (tmp_path / "val.txt").write_text("v/b2.mp4 jump\n")
    (tmp_path / "test.txt").write_text("v/a3.mp4 spin\n")
    s = load_splits(train_list=tmp_path / "train.txt", val_list=tmp_path / "val.txt", test_list=tmp_path / "test.txt")
    assert s.classes == ["jump", "spin"]  # sorted names when no class-index file
    assert [(Path(x.path).name, x.label) for x in s.train] == [("a1.mp4", 1), ("b1.mp4", 0), ("a2.mp4", 1)]
    assert s.val == [Sample(str((tmp_path / "v/b2.mp4").resolve()), 0)]  # relative to the list's folder

    (tmp_path / "idx.txt").write_text("v/a.mp4 0\nv/b.mp4 2\n")
    s = load_splits(root=tmp_path / "videos", train_list=tmp_path / "idx.txt", val_list=tmp_path / "idx.txt",
                    test_list=tmp_path / "idx.txt")
    assert s.classes == ["0", "1", "2"]
    assert [x.label for x in s.train] == [0, 2]
    assert s.train[0].path == str((tmp_path / "videos" / "v/a.mp4").resolve())  # relative to root when given


def test_ucf101_lists_one_based_with_classind_and_unlabelled_testlist(tmp_path):
    lists = tmp_path / "ucfTrainTestlist"
    lists.mkdir()
    (lists / "classInd.txt").write_text("1 ApplyEyeMakeup\n2 Archery\n3 BabyCrawling\n")
    (lists / "trainlist01.txt").write_text(
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1\nArchery/v_Archery_g08_c01.avi 2\n"
        "BabyCrawling/v_BabyCrawling_g08_c01.avi 3\nArchery/v_Archery_g09_c01.avi 2\n"
    )
    (lists / "testlist01.txt").write_text("ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi\nBabyCrawling/v_BabyCrawling_g01_c01.avi\n")
    s = load_splits(root=tmp_path / "UCF-101", train_list=lists / "trainlist01.txt",
                    val_list=lists / "trainlist01.txt", test_list=lists / "testlist01.txt")
    assert s.classes == ["ApplyEyeMakeup", "Archery", "BabyCrawling"]  # classInd.txt found next to the list
    assert [x.label for x in s.train] == [0, 1, 2, 1]  # 1-based labels read as 0-based
    assert [x.label for x in s.test] == [0, 2]  # no label: the parent folder names the class
    assert s.test[0].path == str((tmp_path / "UCF-101/ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi").resolve())


def test_class_index_files(tmp_path):
    (tmp_path / "names.txt").write_text("spin\njump\n")
    assert read_class_index(tmp_path / "names.txt") == (["spin", "jump"], 0)
    (tmp_path / "zero.txt").write_text("0 spin\n1 jump\n")
    assert read_class_index(tmp_path / "zero.txt") == (["spin", "jump"], 0)
    (tmp_path / "gap.txt").write_text("1 spin\n3 jump\n")
    with pytest.raises(AnnotationError, match="consecutively"):
        read_class_index(tmp_path / "gap.txt")
    (tmp_path / "dup.txt").write_text("1 spin\n1 jump\n")
    with pytest.raises(AnnotationError, match=r"dup.txt:2: class index 1 appears twice"):
        read_class_index(tmp_path / "dup.txt")


@pytest.mark.parametrize(
    "lines, message",
    [
        ("a.mp4 spin\nb.mp4 waltz\n", r"train.txt:2: unknown class 'waltz'"),
        ("a.mp4 1\nb.mp4 7\n", r"train.txt:2: label 7 out of range for 2 classes"),
        ("a.mp4 spin\n\nspin/b.mp4\nc.mp4 -1\n", r"train.txt:4: label -1 out of range"),
        ("a.mp4 spin\nfoxtrot/b.mp4\n", r"train.txt:2: no label, and the parent folder 'foxtrot'"),
    ],
)
def test_bad_lines_name_the_file_and_line(tmp_path, lines, message):
    (tmp_path / "classes.txt").write_text("spin\njump\n")
    (tmp_path / "train.txt").write_text(lines)
    with pytest.raises(AnnotationError, match=message):
        load_splits(train_list=tmp_path / "train.txt", val_list=tmp_path / "train.txt", test_list=tmp_path / "train.txt")


def test_unlabelled_line_without_class_index_is_an_error(tmp_path):
    (tmp_path / "train.txt").write_text("a.mp4 0\nspin/b.mp4\n")
    with pytest.raises(AnnotationError, match=r"train.txt:2: a line without a label needs a class-index file"):
        load_splits(train_list=tmp_path / "train.txt")


def test_missing_list_is_a_clear_error(tmp_path):
    with pytest.raises(AnnotationError, match="nope.txt: annotation list not found"):
        load_splits(train_list=tmp_path / "nope.txt")
    with pytest.raises(AnnotationError, match="without data.train_list"):
        load_splits(root=tmp_path, val_list=tmp_path / "v.txt")


def _samples(per_class: dict[int, int]) -> list[Sample]:
    return [Sample(f"/v/{c}_{i}.mp4", c) for c, n in per_class.items() for i in range(n)]


def test_stratified_split_keeps_class_proportions_and_is_seeded():
    samples = _samples({0: 50, 1: 30, 2: 20})
    rest, held = stratified_split(samples, 0.2, seed=0)
    assert len(held) == 20 and len(rest) == 80
    assert Counter(s.label for s in held) == {0: 10, 1: 6, 2: 4}
    assert not set(rest) & set(held)
    assert stratified_split(samples, 0.2, seed=0)[1] == held
    assert stratified_split(samples, 0.2, seed=1)[1] != held


def test_stratified_split_falls_back_when_a_class_is_tiny(caplog):
    rest, held = stratified_split(_samples({0: 9, 1: 1}), 0.3, seed=0)
    assert len(held) == 3 and len(rest) == 7
    assert "too few videos per class" in caplog.text


def test_splits_from_one_folder_are_stratified_and_disjoint(tmp_path):
    for name in ("a", "b"):
        for i in range(10):
            touch(tmp_path / name / f"{i}.avi")
    s = load_splits(root=tmp_path, val_fraction=0.2, test_fraction=0.2, seed=3)
    assert (len(s.train), len(s.val), len(s.test)) == (12, 4, 4)
    for part in (s.train, s.val, s.test):
        counts = Counter(x.label for x in part)
        assert counts[0] == counts[1]
    paths = [x.path for part in (s.train, s.val, s.test) for x in part]
    assert len(set(paths)) == 20


def test_val_split_off_a_given_train_list(tmp_path):
    (tmp_path / "train.txt").write_text("".join(f"v{i}.mp4 {i % 2}\n" for i in range(20)))
    (tmp_path / "test.txt").write_text("t.mp4 1\n")
    s = load_splits(train_list=tmp_path / "train.txt", test_list=tmp_path / "test.txt", val_fraction=0.25)
    assert (len(s.train), len(s.val), len(s.test)) == (15, 5, 1)


def test_lists_in_root_are_found_when_none_given(tmp_path):
    (tmp_path / "classes.txt").write_text("spin\njump\n")
    (tmp_path / "train.txt").write_text("v/a.mp4 0\nv/b.mp4 1\n")
    (tmp_path / "test.txt").write_text("v/c.mp4 1\n")
    s = load_splits(root=tmp_path, val_fraction=0.5)
    assert s.classes == ["spin", "jump"]
    assert len(s.train) == 1 and len(s.val) == 1  # no val.txt: split off train.txt
    assert s.test == [Sample(str((tmp_path / "v/c.mp4").resolve()), 1)]


# ----------------------------------------------------------------------------- hostile lists


@pytest.mark.parametrize("label", ["100000", "99999999999", "9" * 5000])
def test_huge_integer_labels_are_an_error_before_any_class_list_is_built(tmp_path, label):
    # 100000 would make 100001 classes, one beyond MAX_CLASSES; the others would allocate gigabytes
    # (or, with 5000 digits, fail inside int()) without the bound.
    (tmp_path / "train.txt").write_text(f"a.mp4 0\nb.mp4 {label}\n")
    with pytest.raises(AnnotationError, match=r"train.txt:2: label \d+ would make more than 100000 classes"):
        load_splits(train_list=tmp_path / "train.txt", val_list=tmp_path / "train.txt", test_list=tmp_path / "train.txt")
    # the largest allowed label still works, and a class-index file bounds labels by itself
    (tmp_path / "ok.txt").write_text("a.mp4 0\nb.mp4 99999\n")
    s = load_splits(train_list=tmp_path / "ok.txt", val_list=tmp_path / "ok.txt", test_list=tmp_path / "ok.txt")
    assert len(s.classes) == 100_000 and [x.label for x in s.train] == [0, 99999]
    (tmp_path / "classes.txt").write_text("spin\njump\n")
    with pytest.raises(AnnotationError, match="train.txt:2: label .* out of range for 2 classes"):
        load_splits(train_list=tmp_path / "train.txt", val_list=tmp_path / "train.txt", test_list=tmp_path / "train.txt")


def test_superscript_digits_are_a_class_name_not_an_integer(tmp_path):
    # "²".isdigit() is True but int("²") raises: such a token is a name (and mixing it with integers is an error)
    (tmp_path / "train.txt").write_text("a.mp4 0\nb.mp4 ²\n")
    with pytest.raises(AnnotationError, match=r"train.txt:2: label '²' is a name but others are integers"):
        load_splits(train_list=tmp_path / "train.txt")


def test_lists_are_utf8_a_bom_keeps_the_first_entry_utf16_is_an_error(tmp_path):
    (tmp_path / "train.txt").write_bytes("\ufeffv/a.mp4 spin\nv/b.mp4 jump\n".encode("utf-8"))
    (tmp_path / "classes.txt").write_bytes("\ufeffspin\njump\n".encode("utf-8"))
    s = load_splits(train_list=tmp_path / "train.txt", val_list=tmp_path / "train.txt", test_list=tmp_path / "train.txt")
    assert s.classes == ["spin", "jump"] and [(Path(x.path).name, x.label) for x in s.train] == [("a.mp4", 0), ("b.mp4", 1)]
    (tmp_path / "utf16.txt").write_bytes("v/a.mp4 spin\n".encode("utf-16"))
    with pytest.raises(AnnotationError, match="utf16.txt: the list is UTF-16; save it as UTF-8"):
        load_splits(train_list=tmp_path / "utf16.txt")


def test_a_symlink_loop_in_a_list_is_left_to_the_video_reader(tmp_path):
    # Path.resolve() raised RuntimeError on it and ended the run; the reader skips it by name instead
    (tmp_path / "v").mkdir()
    (tmp_path / "v" / "loop.mp4").symlink_to("loop.mp4")
    (tmp_path / "train.txt").write_text("v/loop.mp4 0\nv/b.mp4 1\n")
    s = load_splits(train_list=tmp_path / "train.txt", val_list=tmp_path / "train.txt", test_list=tmp_path / "train.txt")
    assert [x.path for x in s.train] == [str(tmp_path / "v" / "loop.mp4"), str(tmp_path / "v" / "b.mp4")]


def test_duplicates_and_videos_in_two_splits_are_warned_with_a_count_or_errors_when_strict(tmp_path, caplog):
    (tmp_path / "train.txt").write_text("v/a.mp4 spin\nv/b.mp4 jump\nv/a.mp4 jump\nv/c.mp4 spin\nv/b.mp4 jump\nv/d.mp4 jump\n")
    (tmp_path / "val.txt").write_text("v/e.mp4 spin\n")
    (tmp_path / "test.txt").write_text("v/c.mp4 spin\nv/f.mp4 jump\n")
    lists = dict(train_list=tmp_path / "train.txt", val_list=tmp_path / "val.txt", test_list=tmp_path / "test.txt")
    a, b, c = (str(tmp_path / "v" / n) for n in ("a.mp4", "b.mp4", "c.mp4"))
    with caplog.at_level("WARNING"):
        s = load_splits(**lists)
    assert len(s.train) == 6  # still accepted as given
    train = tmp_path / "train.txt"
    assert (f"{train}: 2 video(s) listed more than once, e.g. {a} at {train}:1 (spin), {train}:3 (jump); "
            f"{b} at {train}:2 (jump), {train}:5 (jump)") in caplog.text
    assert f"1 video(s) are in more than one of train/val/test, e.g. {c} in train and test" in caplog.text
    with pytest.raises(AnnotationError, match=r"train.txt: 2 video\(s\) listed more than once.*\(data.strict is true\)"):
        load_splits(**lists, strict=True)
    (tmp_path / "train.txt").write_text("v/a.mp4 spin\nv/b.mp4 jump\nv/c.mp4 spin\n")
    with pytest.raises(AnnotationError, match=r"1 video\(s\) are in more than one of train/val/test"):
        load_splits(**lists, strict=True)
    (tmp_path / "test.txt").write_text("v/f.mp4 jump\n")
    caplog.clear()
    with caplog.at_level("WARNING"):
        load_splits(**lists, strict=True)  # clean lists: no error, no warning
    assert caplog.text == ""


# ----------------------------------------------------------------------------- rawframe lists, Kinetics CSVs


def test_mmaction2_rawframe_lists_are_recognised_from_their_lines(tmp_path):
    (tmp_path / "classes.txt").write_text("spin\njump\n")
    (tmp_path / "train.txt").write_text("spin/v1 120 0\njump/v2 75 1\n")
    s = load_splits(root=tmp_path / "rawframes", train_list=tmp_path / "train.txt", val_list=tmp_path / "train.txt",
                    test_list=tmp_path / "train.txt")
    assert [(x.path, x.label, x.listed_frames, x.source) for x in s.train] == [
        (str(tmp_path / "rawframes/spin/v1"), 0, 120, f"{tmp_path / 'train.txt'}:1"),
        (str(tmp_path / "rawframes/jump/v2"), 1, 75, f"{tmp_path / 'train.txt'}:2"),
    ]
    (tmp_path / "plain.txt").write_text("spin/a.mp4 0\nspin/v1 1\n")  # two tokens: the usual "path label" list
    s = load_splits(train_list=tmp_path / "plain.txt", val_list=tmp_path / "plain.txt", test_list=tmp_path / "plain.txt")
    assert [(x.label, x.listed_frames) for x in s.train] == [(0, None), (1, None)]


@pytest.mark.parametrize("line", ["jump/v2 75", "jump/v2 many 1", "jump/v2 75 1 3"])
def test_a_bad_rawframe_line_names_file_and_line(tmp_path, line):
    (tmp_path / "train.txt").write_text(f"spin/v1 120 0\n# comment\n{line}\n")
    with pytest.raises(AnnotationError, match=r"train.txt:3: expected 'frame_dir total_frames label' like line 1"):
        load_splits(train_list=tmp_path / "train.txt")


def test_a_folder_per_class_root_may_hold_frame_folders(tmp_path):
    touch(tmp_path / "spin" / "v1" / "img_00001.jpg")
    touch(tmp_path / "spin" / "v1" / "x_00001.jpg")
    touch(tmp_path / "jump" / "clip.mp4")
    touch(tmp_path / "jump" / "v2" / "frame_000000.png")  # another pattern: not a frame folder by default
    samples, classes = scan_folder(tmp_path)
    assert classes == ["jump", "spin"]
    assert [(Path(x.path).relative_to(tmp_path).as_posix(), x.label) for x in samples] == [("jump/clip.mp4", 0), ("spin/v1", 1)]
    samples, _ = scan_folder(tmp_path, frame_pattern="frame_{:06d}.png")
    assert [Path(x.path).name for x in samples] == ["clip.mp4", "v2"]


KINETICS_HEADER = "label,youtube_id,time_start,time_end,split,is_cc\n"


def test_kinetics_csvs_with_quoted_labels_extra_columns_and_missing_videos(tmp_path, caplog):
    videos = tmp_path / "videos"
    touch(videos / "abseiling" / "aaa_000010_000020.mp4")  # the downloader's <label>/<id>_<start>_<end>.mp4
    touch(videos / "bbb.mp4")  # <id>.mp4 anywhere under the root
    touch(videos / "other" / "ccc_000003_000013.mp4")
    touch(videos / "zumba" / "ccc_000003_000013.mp4")  # a namesake in the label's folder wins
    (tmp_path / "train.csv").write_text(
        KINETICS_HEADER
        + "abseiling,aaa,10,20,train,0\n"
        + '"dancing, ballet",bbb,0.0,10,train,1\n'  # a quoted label holding a comma
        + "zumba,ccc,3,13,train,0\n"
        + "zumba,gone1,5,15,train,0\n"  # missing: left out, yet its class counts
        + '"yoga, hot",gone2,1,11,train,0\n'
    )
    (tmp_path / "val.csv").write_text(KINETICS_HEADER + "zumba,ccc,3,13,val,0\nzumba,gone3,0,10,val,0\n")
    with caplog.at_level("WARNING"):
        s = load_splits(root=videos, train_list=tmp_path / "train.csv", val_list=tmp_path / "val.csv",
                        test_list=tmp_path / "val.csv")
    assert s.classes == ["abseiling", "dancing, ballet", "yoga, hot", "zumba"]  # from the CSVs, sorted
    assert [(Path(x.path).relative_to(videos).as_posix(), x.label) for x in s.train] == [
        ("abseiling/aaa_000010_000020.mp4", 0), ("bbb.mp4", 1), ("zumba/ccc_000003_000013.mp4", 3)]
    assert [x.source for x in s.train] == [f"{tmp_path / 'train.csv'}:{n}" for n in (2, 3, 4)]
    warnings = [r.getMessage() for r in caplog.records if "missing" in r.getMessage()]
    assert len(warnings) == 1  # one warning for every missing video of every list
    assert warnings[0].startswith(f"4 of 9 listed Kinetics videos are missing under {videos}")
    for name, line in (("gone1_000005_000015.mp4", "train.csv:5"), ("gone2_000001_000011.mp4", "train.csv:6"),
                       ("gone3_000000_000010.mp4", "val.csv:3")):
        assert f"{name} ({tmp_path / line})" in warnings[0]


@pytest.mark.parametrize(
    "header, row, message",
    [
        (KINETICS_HEADER, "dancing, ballet,bbb,0,10,train,0\n", r"train.csv:2: 7 fields where the header has 6 \(a label that holds a comma must be quoted"),
        (KINETICS_HEADER, "zumba,bbb,soon,10,train,0\n", r"train.csv:2: time_start 'soon' is not a number of seconds"),
        (KINETICS_HEADER, ",bbb,0,10,train,0\n", r"train.csv:2: empty label"),
        ("youtube_id,time_start,time_end,split\n", "bbb,0,10,test\n", r"train.csv:1: a Kinetics CSV needs the columns label,youtube_id,time_start,time_end; label missing"),
    ],
)
def test_bad_kinetics_rows_name_file_and_line(tmp_path, header, row, message):
    touch(tmp_path / "bbb.mp4")
    (tmp_path / "train.csv").write_text(header + row)
    with pytest.raises(AnnotationError, match=message):
        load_splits(train_list=tmp_path / "train.csv")


def test_a_kinetics_list_with_none_of_its_videos_is_an_error(tmp_path):
    (tmp_path / "train.csv").write_text(KINETICS_HEADER + "zumba,gone,0,10,train,0\n")
    with pytest.raises(AnnotationError, match=r"train.csv: none of its 1 videos is under"):
        load_splits(train_list=tmp_path / "train.csv")
