"""The copy check (util/copycheck.py): the longest passage of a sample found verbatim in a corpus, and
the share of the sample inside copied passages, against brute force, with the file and report edges."""
import os
import random
import re

import pytest

import util.copycheck as copycheck
from util.copycheck import COPY_LENGTH, CopyReport, Corpus, read_corpus, report_line
from util.errors import UserError

SEEDS = range(300)


def brute_longest(corpus: str | bytes, sample: str | bytes) -> int:
    """The longest common substring's length, trying every passage of the sample longest first."""
    best = 0
    for start in range(len(sample)):
        for stop in range(len(sample), start + best, -1):
            if sample[start:stop] in corpus:
                best = stop - start
                break
    return best


def brute_share(corpus: str, sample: str, min_copy: int) -> float:
    """The share of the sample's characters inside a passage of min_copy or more found in the corpus."""
    covered = [False] * len(sample)
    for start in range(len(sample) - min_copy + 1):
        if sample[start:start + min_copy] in corpus:
            covered[start:start + min_copy] = [True] * min_copy
    return sum(covered) / len(sample) if sample else 0.0


def random_case(seed: int) -> tuple[str, str, int]:
    """A corpus, a sample and a min_copy over a tiny alphabet, where passages repeat a lot."""
    generator = random.Random(seed)
    alphabet = generator.choice(["ab", "abc", "a\nb"])
    corpus = "".join(generator.choice(alphabet) for _ in range(generator.randint(0, 100)))
    sample = "".join(generator.choice(alphabet) for _ in range(generator.randint(0, 40)))
    return corpus, sample, generator.randint(1, 10)


def assert_consistent(report: CopyReport, corpus: str, sample: str) -> None:
    """The passage is the sample's at sample_offset, occurs at corpus_offset, first there, on corpus_line."""
    if not report.longest:
        assert (report.sample_offset, report.corpus_offset, report.passage) == (0, 0, "")
        return
    passage = sample[report.sample_offset:report.sample_offset + report.longest]
    assert report.passage == passage == corpus[report.corpus_offset:report.corpus_offset + report.longest]
    assert report.corpus_offset == corpus.find(passage)
    assert report.corpus_line == corpus.count("\n", 0, report.corpus_offset) + 1


def check_seeds() -> None:
    for seed in SEEDS:
        corpus, sample, min_copy = random_case(seed)
        report = Corpus(corpus).check(sample, min_copy)
        assert report.longest == brute_longest(corpus, sample), (seed, corpus, sample)
        assert report.copied_share == pytest.approx(brute_share(corpus, sample, min_copy)), (seed, corpus, sample)
        assert report.sample_length == len(sample) and report.min_copy == min_copy
        assert_consistent(report, corpus, sample)


def test_longest_passage_and_copied_share_match_brute_force():
    check_seeds()


def test_results_stay_exact_when_every_hash_collides(monkeypatch):
    # base 1 hashes a window to the sum of its tokens: nearly every hash match is a false one
    monkeypatch.setattr(copycheck, "BASE", 1)
    check_seeds()


def thue_morse(length: int, letters: str = "ab") -> str:
    return "".join(letters[bin(i).count("1") % 2] for i in range(length))


def test_a_real_hash_collision_is_not_taken_for_a_copy(monkeypatch):
    # Thue-Morse and its complement collide under every polynomial hash mod 2^32 from length 64 on
    original, sample = thue_morse(64), thue_morse(64, "ba")
    assert copycheck._prefix_hashes(Corpus(original)._tokens, copycheck.BASE, 64)[-1] == \
        copycheck._prefix_hashes(Corpus(sample)._tokens, copycheck.BASE, 64)[-1]
    # every shorter passage of the sample is there, so the search tries the whole one, which only collides
    corpus = "c".join([original, sample[:63], sample[1:]])
    compared = []
    real_equal = copycheck._equal

    def equal_recorded(*args):
        same = real_equal(*args)
        compared.append(same)
        return same

    monkeypatch.setattr(copycheck, "_equal", equal_recorded)
    report = Corpus(corpus).check(sample)
    assert any(not same.all() for same in compared)
    assert (report.longest, report.corpus_offset) == (63, 65)
    assert report.copied_share == 1.0


def test_results_do_not_depend_on_the_chunk_size(monkeypatch):
    monkeypatch.setattr(copycheck, "CHUNK", 5)
    check_seeds()


def test_stitched_copies_match_brute_force():
    # pieces copied from different places, end to end: runs of copied windows longer than any one passage
    for seed in range(4):
        generator = random.Random(seed)
        corpus = "".join(generator.choice("abcd") for _ in range(2_000))
        pieces = []
        while sum(map(len, pieces)) < 150:
            start, length = generator.randrange(1_900), generator.randint(5, 60)
            pieces.append(corpus[start:start + length])
        sample = "".join(pieces)
        report = Corpus(corpus).check(sample)
        assert report.longest == brute_longest(corpus, sample), seed
        assert report.copied_share == pytest.approx(brute_share(corpus, sample, COPY_LENGTH)), seed
        assert_consistent(report, corpus, sample)


def test_longest_passage_is_found_far_beyond_min_copy():
    generator = random.Random(7)
    corpus = "".join(generator.choice("abcdefgh \n") for _ in range(5_000))
    sample = "zz" + corpus[1_234:1_234 + 300] + "yy" + corpus[4_000:4_100] + "xx"
    report = Corpus(corpus).check(sample)
    assert (report.longest, report.sample_offset, report.corpus_offset) == (300, 2, 1_234)
    assert report.copied_share == pytest.approx(400 / len(sample))


def test_passages_at_the_start_and_the_end_of_the_corpus_are_found():
    corpus = "the beginning of it all, " + "x" * 50 + ", and that is the end"
    start, end = Corpus(corpus).check("<" + corpus[:30] + ">"), Corpus(corpus).check("<" + corpus[-30:] + ">")
    assert (start.longest, start.corpus_offset, start.sample_offset) == (30, 0, 1)
    assert (end.longest, end.corpus_offset, end.sample_offset) == (30, len(corpus) - 30, 1)


def test_sample_equal_to_the_corpus_is_copied_whole():
    corpus = "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n"
    report = Corpus(corpus).check(corpus)
    assert (report.longest, report.sample_offset, report.corpus_offset, report.corpus_line) == (len(corpus), 0, 0, 1)
    assert report.copied_share == 1.0 and report.passage == corpus


def test_empty_sample_reports_nothing_copied():
    assert Corpus("some training text").check("") == CopyReport(0, 0, 0, 0, 0, "", 0.0)


def test_empty_corpus_holds_no_passage():
    report = Corpus("").check("a sample longer than twenty characters")
    assert (report.longest, report.copied_share, len(Corpus(""))) == (0, 0.0, 0)


def test_sample_shorter_than_min_copy_has_no_copied_share():
    report = Corpus("abcdefghij" * 5).check("cdefg")
    assert (report.longest, report.copied_share) == (5, 0.0)


def test_min_copy_below_one_is_refused():
    with pytest.raises(ValueError, match="min_copy"):
        Corpus("abc").check("abc", min_copy=0)


def test_corpus_line_counts_the_newlines_before_the_occurrence():
    corpus = "".join(f"line {number} of the text, a little different each time\n" for number in range(1, 200))
    report = Corpus(corpus).check("xx" + "line 123 of the text, a little" + "yy")
    assert report.corpus_line == 123 and report.longest == 30
    assert corpus.splitlines()[report.corpus_line - 1].startswith(report.passage)


def test_chinese_text_is_compared_by_code_point():
    corpus = "满纸荒唐言，一把辛酸泪！都云作者痴，谁解其中味？\n" * 3 + "假作真时真亦假，无为有处有还无。"
    sample = "甲乙" + "都云作者痴，谁解其中味？\n满纸荒唐言" + "丙丁"
    report = Corpus(corpus).check(sample, min_copy=5)
    assert (report.longest, report.sample_offset, report.corpus_offset) == (18, 2, 12)
    assert report.passage == "都云作者痴，谁解其中味？\n满纸荒唐言"
    assert report.copied_share == pytest.approx(18 / 22)


def test_characters_beyond_the_basic_plane_count_as_one_token():
    corpus = "emoji 😀😃😄 and more 🎉🎊 text"
    report = Corpus(corpus).check("🎉🎊 text!")
    assert (report.longest, report.corpus_offset, report.passage) == (7, corpus.index("🎉"), "🎉🎊 text")


def test_byte_corpus_compares_bytes_and_decodes_the_passage_leniently():
    corpus = "naïve café".encode()
    report = Corpus(corpus).check(b"xx" + corpus[3:9] + b"yy", min_copy=3)
    # the passage starts inside ï's two bytes: that half decodes as the replacement character
    assert (report.longest, report.corpus_offset, report.sample_offset) == (6, 3, 2)
    assert report.passage == "\ufffdve ca"


def test_str_sample_of_byte_tokens_matches_a_byte_corpus():
    corpus = "café au lait".encode()
    sample = "".join(map(chr, corpus[2:8]))  # a byte vocabulary's tokens: chr(byte)
    assert Corpus(corpus).check(sample, min_copy=3).longest == 6


def test_read_corpus_decodes_and_drops_a_utf8_bom(tmp_path):
    path = tmp_path / "input.txt"
    path.write_bytes(b"\xef\xbb\xbf" + "红楼梦\nline two".encode())
    report = read_corpus(str(path), "utf-8").check("楼梦\nline")
    assert (report.longest, report.corpus_offset) == (7, 1)
    assert len(read_corpus(str(path), "bytes")) == len(path.read_bytes())


def test_read_corpus_gives_the_same_report_for_any_encoding_of_a_text(tmp_path):
    text = "Première ligne: déjà vu.\nSecond line, plain ASCII, a little longer.\n"
    sample = "<<" + text[10:60] + ">>"
    expected = Corpus(text).check(sample, min_copy=10)
    for encoding in ("utf-8", "latin-1", "utf-16"):
        path = tmp_path / f"{encoding}.txt"
        path.write_bytes(text.encode(encoding))
        assert read_corpus(str(path), encoding).check(sample, min_copy=10) == expected, encoding
    ascii_text = text.encode("ascii", "ignore").decode()
    (tmp_path / "ascii.txt").write_text(ascii_text, encoding="ascii")
    assert (read_corpus(str(tmp_path / "ascii.txt"), "utf-8").check(ascii_text[5:40])
            == Corpus(ascii_text).check(ascii_text[5:40]))


def test_read_corpus_reports_an_unreadable_file_in_one_line(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # opened for reading, it would wait for a writer forever
    for path, problem in ((tmp_path / "missing.txt", "does not exist"), (tmp_path, "is a directory"),
                          (fifo, "is a FIFO (named pipe)"), ("/dev/zero", "is a character device")):
        with pytest.raises(UserError, match=f"^-check_copy file {path} {re.escape(problem)}") as error:
            read_corpus(str(path), "utf-8")
        assert "\n" not in str(error.value)


def test_read_corpus_reports_where_the_text_does_not_decode(tmp_path):
    path = tmp_path / "input.txt"
    path.write_bytes(b"\xef\xbb\xbfabc\xffdef")
    with pytest.raises(UserError, match=rf"^-check_copy file {path} is not valid utf-8 \(byte offset 6\)$"):
        read_corpus(str(path), "utf-8")


def test_report_line_is_one_line_naming_the_passage_and_the_share():
    corpus = "intro\n" + "\n".join(f"line {n}: the quick brown fox jumps over the lazy dog" for n in range(5))
    report = Corpus(corpus).check("@@" + corpus[20:110] + "@@")
    line = report_line(report, "data/input.txt", "sample 2")
    assert line.startswith("copy check (sample 2): longest passage found in data/input.txt: 90 characters at line 2 "
                           "(character 21): \"")
    assert "\\n" in line and "…" in line and "\n" not in line
    assert line.endswith(f"; {report.copied_share:.1%} of the sample is inside copied passages of "
                         f"{COPY_LENGTH}+ characters")


def test_report_line_says_when_nothing_is_copied():
    corpus = Corpus("abc")
    nothing = report_line(corpus.check("xyz"), "in\nput.txt")
    assert nothing == "copy check: no character of the sample occurs in in\\nput.txt"
    assert report_line(corpus.check(""), "input.txt") == "copy check: the sample is empty"
