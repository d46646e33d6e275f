"""Validation with quarantine: every rule on a corrupted copy of the hand-made fixture
(data/fixtures/good), fatal contract errors, and hypothesis garbage rows."""

from __future__ import annotations

import csv
import datetime
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from analysis import contract
from analysis.validate import (
    RULES,
    DataContractError,
    schema,
    validate_collaborative,
    validate_frames,
)

GOOD = Path(__file__).resolve().parents[1] / "data" / "fixtures" / "good"
N_GOOD = {"sites": 3, "site_months": 9, "episodes": 12}


def raw(table: str) -> pd.DataFrame:
    return pd.read_csv(GOOD / f"{table}.csv", dtype=str, keep_default_na=False)


def reconciles(summary: dict) -> None:
    for v in summary["files"].values():
        assert v["rows_read"] == v["rows_accepted"] + v["rows_quarantined"]
    assert summary["rows_read"] == summary["rows_accepted"] + summary["rows_quarantined"]


def test_good_fixture_is_clean():
    r = validate_collaborative(GOOD)
    assert r.quarantine.empty
    assert {k: v["rows_accepted"] for k, v in r.summary["files"].items()} == N_GOOD
    for name in ("episodes", "sites", "site_months"):
        schema(name).validate(getattr(r, name))
    ep = r.episodes
    assert ep["arrival_time"].dtype == "datetime64[ns]"
    assert ep["ccc_count"].dtype == "int64" and ep["huddle"].dtype == bool
    # hand-read from the fixture: E0010 arrival has fractional seconds, E0006 uses a space separator
    assert ep.loc[ep.episode_id == "E0010", "arrival_time"].iloc[0] == pd.Timestamp("2017-01-15 07:00:00.5")
    assert ep.loc[ep.episode_id == "E0006", "time_zero"].iloc[0] == pd.Timestamp("2017-01-12 04:00")
    # booleans written as no/yes, 0/1, F/T and TRUE/FALSE
    assert ep.set_index("episode_id").loc[["E0005", "E0007", "E0009", "E0010"], "huddle"].tolist() == [
        True, True, True, True]
    assert ep.set_index("episode_id").loc[["E0005", "E0007", "E0009", "E0010"], "order_set"].tolist() == [
        False, True, True, True]
    # "YYYY-MM" and "YYYY-MM-01" months are the same Timestamp
    assert set(r.site_months["month"].dt.strftime("%Y-%m-%d")) == {"2016-12-01", "2017-01-01", "2017-02-01"}
    assert r.sites.loc[r.sites.site_id == "S03", "site_name"].iloc[0] == "Coastal Kids, West"


# (table, 0-based row or "append", {column: value}, expected rule codes, expected quarantined rows)
SITE_ROW = {"site_id": "S04", "site_name": "New", "go_live": "2018-01-01", "wave": "3",
            "region": "South", "beds": "50"}
CASES = {
    "missing_required": ("episodes", 0, {"sex": ""}, {"missing_required"}),
    "missing_required_id": ("episodes", 0, {"patient_id": "  "}, {"missing_required"}),
    "non_numeric": ("episodes", 0, {"age_years": "three"}, {"non_numeric"}),
    "non_numeric_nan": ("episodes", 0, {"icu_days": "nan"}, {"non_numeric"}),
    "non_integer": ("episodes", 0, {"ccc_count": "1.5"}, {"non_integer"}),
    "out_of_range_age": ("episodes", 0, {"age_years": "21.5"}, {"out_of_range"}),
    "out_of_range_negative_age": ("episodes", 0, {"age_years": "-0.1"}, {"out_of_range"}),
    "out_of_range_ccc": ("episodes", 0, {"ccc_count": "21"}, {"out_of_range"}),
    "out_of_range_icu": ("episodes", 0, {"icu_days": "-1"}, {"out_of_range"}),
    "unknown_category_onset": ("episodes", 0, {"onset_setting": "ER"}, {"unknown_category"}),
    "unknown_category_sex": ("episodes", 0, {"sex": "female"}, {"unknown_category"}),
    "invalid_bool": ("episodes", 0, {"huddle": "maybe"}, {"invalid_bool"}),
    "unparseable_timestamp": ("episodes", 0, {"time_zero": "03/12/2016 08:40"}, {"unparseable_timestamp"}),
    "unparseable_timestamp_hour": ("episodes", 0, {"time_zero": "2016-12-03T25:00:00"},
                                   {"unparseable_timestamp"}),
    "unparseable_timestamp_day": ("episodes", 0, {"first_bolus_time": "2016-02-30T09:00:00"},
                                  {"unparseable_timestamp"}),
    "mixed_timestamp_offset": ("episodes", 0, {"time_zero": "2016-12-03T08:40:00+01:00"},
                               {"mixed_timestamp_format"}),
    "mixed_timestamp_z": ("episodes", 0, {"arrival_time": "2016-12-03T08:15:00Z"}, {"mixed_timestamp_format"}),
    "mixed_timestamp_date_only": ("episodes", 0, {"first_bolus_time": "2016-12-03"},
                                  {"mixed_timestamp_format"}),
    "duplicate_episode_id": ("episodes", 1, {"episode_id": "E0001"}, {"duplicate_episode_id"}),
    "unknown_site_id": ("episodes", 0, {"site_id": "S99"}, {"unknown_site_id"}),
    # discharge before arrival implies T0 is outside the stay: both rules fire by logic
    "discharge_before_arrival": ("episodes", 10, {"arrival_time": "2017-02-07T00:00:00"},
                                 {"discharge_before_arrival", "t0_before_arrival"}),
    "t0_before_arrival": ("episodes", 10, {"time_zero": "2017-02-05T16:00:00"}, {"t0_before_arrival"}),
    "t0_after_discharge": ("episodes", 10, {"time_zero": "2017-02-06T21:00:00"}, {"t0_after_discharge"}),
    "death_after_discharge": ("episodes", 2, {"death_time": "2017-01-06T11:00:00"}, {"death_after_discharge"}),
    "death_before_t0": ("episodes", 2, {"death_time": "2017-01-04T13:00:00"}, {"death_before_t0"}),
    "bolus_outside_stay": ("episodes", 0, {"first_bolus_time": "2016-12-03T08:00:00"}, {"bolus_outside_stay"}),
    "antibiotic_outside_stay": ("episodes", 0, {"first_antibiotic_time": "2016-12-08T00:00:00"},
                                {"antibiotic_outside_stay"}),
    # E0001 stays 4 d 5 h 45 min = 4.24 days
    "icu_days_exceed_los": ("episodes", 0, {"icu_days": "4.5"}, {"icu_days_exceed_los"}),
    "site_duplicate": ("sites", "append", {**SITE_ROW, "site_id": "S02"}, {"duplicate_site_id"}),
    "site_bad_go_live": ("sites", "append", {**SITE_ROW, "go_live": "2018-02-30"}, {"unparseable_date"}),
    "site_go_live_format": ("sites", "append", {**SITE_ROW, "go_live": "01/02/2018"}, {"unparseable_date"}),
    "site_missing_name": ("sites", "append", {**SITE_ROW, "site_name": ""}, {"missing_required"}),
    "site_wave_zero": ("sites", "append", {**SITE_ROW, "wave": "0"}, {"out_of_range"}),
    "site_beds_text": ("sites", "append", {**SITE_ROW, "beds": "many"}, {"non_numeric"}),
    "site_region": ("sites", "append", {**SITE_ROW, "region": "Europe"}, {"unknown_category"}),
    "site_month_duplicate": ("site_months", "append", {"site_id": "S01", "month": "2016-12-01",
                                                       "admissions": "5"}, {"duplicate_site_month"}),
    "site_month_unknown_site": ("site_months", "append", {"site_id": "S99", "month": "2017-01",
                                                          "admissions": "5"}, {"unknown_site_id"}),
    "site_month_negative": ("site_months", 1, {"admissions": "-5"}, {"out_of_range"}),
    "site_month_fraction": ("site_months", 1, {"admissions": "10.5"}, {"non_integer"}),
    "site_month_bad_month": ("site_months", 1, {"month": "2017-13"}, {"unparseable_date"}),
    "site_month_mid_month": ("site_months", 1, {"month": "2017-01-15"}, {"unparseable_date"}),
    # real dates pandas cannot hold (nanosecond timestamps: 1677-09-21 to 2262-04-11)
    "date_out_of_range_9999": ("episodes", 0, {"discharge_time": "9999-01-01T00:00:00"},
                               {"date_out_of_range"}),
    "date_out_of_range_1500": ("episodes", 0, {"first_bolus_time": "1500-06-01 10:00"},
                               {"date_out_of_range"}),
    "site_month_out_of_range": ("site_months", 1, {"month": "1600-01"}, {"date_out_of_range"}),
    # arrival and T0 both in 1700, discharge in 2016: a stay no timedelta can hold (was OverflowError)
    "stay_too_long": ("episodes", 0, {"arrival_time": "1700-01-01T00:00:00",
                                      "time_zero": "1700-01-01T00:10:00"}, {"stay_too_long"}),
    # counts are stored as int64 and analysed as float64: beyond 2**53 they would change
    "count_beyond_2_53": ("site_months", 1, {"admissions": "9007199254740993"}, {"out_of_range"}),
    "count_9_2e18": ("site_months", 1, {"admissions": "9223372036854775808"}, {"out_of_range"}),
    "count_1e300": ("site_months", 1, {"admissions": "1e300"}, {"out_of_range"}),
    "site_invalid_id": ("sites", "append", {**SITE_ROW, "site_id": "../../../x"}, {"invalid_site_id"}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_rule_triggers_exactly(case):
    table, row, change, expected = CASES[case]
    frames = {t: raw(t) for t in N_GOOD}
    df = frames[table]
    if row == "append":
        df.loc[len(df)] = change
        row = len(df) - 1
    else:
        for col, value in change.items():
            df.loc[row, col] = value
    r = validate_frames(frames["episodes"], frames["sites"], frames["site_months"])
    reconciles(r.summary)
    q = r.quarantine
    assert len(q) == 1, q[["file", "row", "reasons", "details"]]
    assert q["file"].iloc[0] == f"{table}.csv"
    assert q["row"].iloc[0] == row + 1  # 1-based data row, header excluded
    assert set(q["reasons"].iloc[0].split(";")) == expected
    assert r.summary["files"][table]["rules"] == {code: 1 for code in expected}
    assert r.summary["files"][table]["rows_accepted"] == len(df) - 1
    for col, value in change.items():  # details name the column and its offending value
        if col in q["details"].iloc[0]:
            assert value.strip() in q["details"].iloc[0]
        assert q[col].iloc[0] == value.strip()  # raw value kept as a string


def test_every_rule_code_is_exercised():
    covered = set().union(*(c[3] for c in CASES.values()))
    assert covered == set(RULES)


def test_all_reasons_are_reported_not_just_the_first():
    ep = raw("episodes")
    ep.loc[3, ["age_years", "sex", "huddle", "time_zero", "ccc_count"]] = ["30", "Q", "x", "soon", ""]
    r = validate_frames(ep, raw("sites"), raw("site_months"))
    q = r.quarantine.iloc[0]
    assert q["row"] == 4 and q["key"] == "E0004"
    assert q["reasons"].split(";") == [
        "missing_required", "out_of_range", "unknown_category", "invalid_bool", "unparseable_timestamp"]
    for text in ("age_years='30'", "sex='Q'", "huddle='x'", "time_zero='soon'", "ccc_count is empty"):
        assert text in q["details"]


def test_duplicates_keep_first_and_name_the_row():
    ep = raw("episodes")
    ep.loc[len(ep)] = ep.loc[4].copy()
    ep.loc[len(ep)] = ep.loc[4].copy()
    r = validate_frames(ep, raw("sites"), raw("site_months"))
    q = r.quarantine
    assert q["row"].tolist() == [13, 14]
    assert (q["details"] == "episode_id='E0005' duplicates row 5").all()
    assert (r.episodes.episode_id == "E0005").sum() == 1


def test_quarantined_site_cascades_to_its_episodes_and_months():
    si = raw("sites")
    si.loc[2, "go_live"] = "not a date"  # S03
    r = validate_frames(raw("episodes"), si, raw("site_months"))
    reconciles(r.summary)
    files = r.summary["files"]
    assert files["sites"]["rules"] == {"unparseable_date": 1}
    assert files["site_months"]["rules"] == {"unknown_site_id": 3}
    assert files["episodes"]["rules"] == {"unknown_site_id": 4}
    cascaded = r.quarantine[r.quarantine.file != "sites.csv"]
    assert (cascaded["details"] == "site_id='S03' was quarantined in sites.csv").all()
    assert "S03" not in set(r.episodes.site_id)


def test_whitespace_is_ignored():
    ep = raw("episodes")
    ep.loc[0, "sex"] = " F "
    ep.loc[0, "time_zero"] = " 2016-12-03T08:40:00"
    r = validate_frames(ep, raw("sites"), raw("site_months"))
    assert r.quarantine.empty


def test_typed_frames_validate_like_strings():
    good = validate_collaborative(GOOD)
    again = validate_frames(good.episodes, good.sites, good.site_months)
    assert again.quarantine.empty
    assert again.data_hash == good.data_hash
    pd.testing.assert_frame_equal(again.episodes, good.episodes)


def test_typed_frames_rules_still_apply():
    good = validate_collaborative(GOOD)
    ep = good.episodes.copy()
    ep.loc[0, "age_years"] = 40.0
    ep.loc[1, "death_time"] = ep.loc[1, "time_zero"] - pd.Timedelta(hours=1)
    r = validate_frames(ep, good.sites, good.site_months)
    assert r.quarantine["reasons"].tolist() == ["out_of_range", "death_before_t0"]


def test_parquet_inputs_match_csv(tmp_path):
    good = validate_collaborative(GOOD)
    typed = tmp_path / "typed"
    typed.mkdir()
    good.episodes.to_parquet(typed / "episodes.parquet")
    shutil.copy(GOOD / "sites.csv", typed)
    good.site_months.to_parquet(typed / "site_months.parquet")
    strings = tmp_path / "strings"
    strings.mkdir()
    for t in N_GOOD:
        raw(t).to_parquet(strings / f"{t}.parquet")
    for d in (typed, strings):
        r = validate_collaborative(d)
        assert r.quarantine.empty
        assert r.data_hash == good.data_hash
    assert good.summary["files"]["episodes"]["file"] == "episodes.csv"
    assert validate_collaborative(typed).summary["files"]["episodes"]["file"] == "episodes.parquet"


def test_data_hash_changes_with_data():
    a = validate_collaborative(GOOD)
    ep = raw("episodes")
    ep.loc[0, "age_years"] = "3.6"
    b = validate_frames(ep, raw("sites"), raw("site_months"))
    assert a.data_hash != b.data_hash


def test_extra_columns_are_kept():
    ep = raw("episodes")
    ep["note"] = "x"
    r = validate_frames(ep, raw("sites"), raw("site_months"))
    assert r.summary["files"]["episodes"]["extra_columns"] == ["note"]
    assert (r.episodes["note"] == "x").all()


# ---------------------------------------------------------------------------------------------
# fatal errors
def extract(tmp_path: Path) -> Path:
    d = tmp_path / "extract"
    shutil.copytree(GOOD, d)
    return d


def test_missing_column_is_fatal(tmp_path):
    d = extract(tmp_path)
    raw("episodes").drop(columns="sex").to_csv(d / "episodes.csv", index=False)
    with pytest.raises(DataContractError) as err:
        validate_collaborative(d)
    assert err.value.file == "episodes.csv" and err.value.column == "sex"
    assert "episodes.csv" in str(err.value) and "'sex'" in str(err.value)


def test_wrong_type_column_is_fatal(tmp_path):
    d = extract(tmp_path)
    ep = raw("episodes")
    ep["age_years"] = ep["sex"]  # shifted column: letters where ages belong
    ep.to_csv(d / "episodes.csv", index=False)
    with pytest.raises(DataContractError) as err:
        validate_collaborative(d)
    assert (err.value.file, err.value.column) == ("episodes.csv", "age_years")


def test_binary_garbage_parquet_is_fatal(tmp_path):
    d = extract(tmp_path)
    (d / "episodes.csv").unlink()
    (d / "episodes.parquet").write_bytes(np.random.default_rng(1).bytes(4096))
    with pytest.raises(DataContractError) as err:
        validate_collaborative(d)
    assert err.value.file.endswith("episodes.parquet")
    assert "unreadable" in err.value.message


@pytest.mark.parametrize(
    "problem", ["invalid_utf8", "directory", "ragged", "empty", "missing", "repeated_column"])
def test_unreadable_files_are_fatal(tmp_path, problem):
    d = extract(tmp_path)
    target = d / "site_months.csv"
    if problem == "invalid_utf8":
        target.write_bytes(target.read_bytes() + b"S01,2017-03,\xff\xfe\n")
    elif problem == "directory":
        target.unlink()
        target.mkdir()
    elif problem == "ragged":
        target.write_text(target.read_text() + "S01,2017-03,10,extra\n")
    elif problem == "empty":
        target.write_text("")
    elif problem == "repeated_column":
        target.write_text("site_id,month,admissions,month\nS01,2016-12,5,2016-12\n")
    else:
        target.unlink()
    with pytest.raises(DataContractError) as err:
        validate_collaborative(d)
    assert err.value.file.endswith("site_months.csv")


def test_both_formats_present_is_fatal(tmp_path):
    d = extract(tmp_path)
    raw("episodes").to_parquet(d / "episodes.parquet")
    with pytest.raises(DataContractError, match="both episodes.csv and episodes.parquet"):
        validate_collaborative(d)


# ---------------------------------------------------------------------------------------------
# property tests: garbage rows appended to a good file
WEIRD = st.sampled_from([
    "", " ", "NA", "null", "nan", "inf", "-1", "0", "1e309", "2016-12-03T08:40:00Z",
    "2016-12-03T08:40:00+05:30", "2016-12-03", "12/03/2016 08:40", "2016-12-03T08:40:00",
    "2016-13-03T08:40:00", "2016-12-03 08:40", "1481 000 000", "true", "YES", "ED", "S01", "E0001",
    "P001", "\"", "a,b", "line\nbreak", "\t", "é", "2016-12-03T08:40:00.123456789", "99999-01-01T00:00",
])
FIELD = st.one_of(
    WEIRD,
    st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12),
    st.integers(-10**6, 10**6).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.datetimes().map(lambda t: t.isoformat(sep=st_sep(t))),
)


def st_sep(t) -> str:
    return "T" if t.microsecond % 2 else " "


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.lists(FIELD, min_size=19, max_size=19), min_size=1, max_size=6))
def test_garbage_rows_never_crash_and_reconcile(tmp_path_factory, rows):
    d = tmp_path_factory.mktemp("garbage")
    for t in ("sites", "site_months"):
        shutil.copy(GOOD / f"{t}.csv", d)
    shutil.copy(GOOD / "episodes.csv", d)
    with open(d / "episodes.csv", "a", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows(rows)
    r = validate_collaborative(d)
    reconciles(r.summary)
    ep = r.summary["files"]["episodes"]
    assert ep["rows_read"] == N_GOOD["episodes"] + len(rows)
    good_ids = {f"E{i:04d}" for i in range(1, 13)}
    assert good_ids <= set(r.episodes["episode_id"])
    q = r.quarantine
    assert set(q["row"]) <= set(range(13, 13 + len(rows)))
    assert (q["reasons"] != "").all()
    for reasons in q["reasons"]:
        assert set(reasons.split(";")) <= set(RULES)
    # per-rule counts agree with the quarantine frame
    for code, count in ep["rules"].items():
        assert q["reasons"].str.split(";").map(lambda r, c=code: c in r).sum() == count
    # every accepted row satisfies the contract
    schema("episodes").validate(r.episodes)


@settings(max_examples=25, deadline=None)
@given(values=st.lists(FIELD, min_size=1, max_size=4), column=st.sampled_from(contract.field_names("episodes")))
def test_garbage_values_in_any_column(values, column):
    ep = raw("episodes")
    for i, v in enumerate(values):
        ep.loc[i, column] = v
    r = validate_frames(ep, raw("sites"), raw("site_months"))
    reconciles(r.summary)
    assert r.summary["files"]["episodes"]["rows_accepted"] >= N_GOOD["episodes"] - len(values)


def test_readme_documents_every_field_and_rule():
    from analysis.derive import DERIVED_COLUMNS

    text = (GOOD.parents[1] / "README.md").read_text()
    names = [f.name for fields in contract.TABLES.values() for f in fields]
    for name in [*names, *DERIVED_COLUMNS, *RULES]:
        assert f"`{name}`" in text, name


def test_bom_and_crlf_are_accepted(tmp_path):
    d = extract(tmp_path)
    text = (d / "episodes.csv").read_text()
    (d / "episodes.csv").write_bytes(b"\xef\xbb\xbf" + text.replace("\n", "\r\n").encode())
    r = validate_collaborative(d)
    assert r.quarantine.empty and r.data_hash == validate_collaborative(GOOD).data_hash


# ---------------------------------------------------------------------------------------------
# hardening: inputs that crashed the validator, changed a value silently or gave unclear messages
def test_parquet_timestamps_outside_the_supported_range_are_quarantined(tmp_path):
    """Parquet timestamps in microseconds reach years pandas' nanoseconds cannot (was
    OutOfBoundsDatetime): the row is quarantined, the others are accepted unchanged."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    good = validate_collaborative(GOOD)
    d = extract(tmp_path)
    (d / "episodes.csv").unlink()
    tab = pa.Table.from_pandas(good.episodes, preserve_index=False)
    for col, row, when in (("death_time", 0, "2500-01-01"), ("arrival_time", 1, "1600-06-01")):
        values = tab.column(col).cast(pa.timestamp("us")).to_pylist()
        values[row] = datetime.datetime.fromisoformat(when)
        tab = tab.set_column(tab.schema.get_field_index(col), col, pa.array(values, pa.timestamp("us")))
    pq.write_table(tab, d / "episodes.parquet")
    r = validate_collaborative(d)
    reconciles(r.summary)
    q = r.quarantine
    assert q["row"].tolist() == [1, 2] and set(q["reasons"]) == {"date_out_of_range"}
    assert "2500-01-01" in q["details"].iloc[0] and "1677-09-21 to 2262-04-11" in q["details"].iloc[0]
    kept = good.episodes.iloc[2:].reset_index(drop=True)
    pd.testing.assert_frame_equal(r.episodes, kept)


def test_parquet_integers_are_read_exactly(tmp_path):
    """An int64 column with a missing value used to become float64 and round 2**53 + 1 to 2**53."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    d = extract(tmp_path)
    (d / "site_months.csv").unlink()
    sm = raw("site_months")
    admissions = [2**53 + 1, None, 2**53, 2**62] + [int(x) for x in sm["admissions"][4:]]
    tab = pa.table({"site_id": sm["site_id"], "month": sm["month"],
                    "admissions": pa.array(admissions, pa.int64())})
    pq.write_table(tab, d / "site_months.parquet")
    r = validate_collaborative(d)
    reconciles(r.summary)
    q = r.quarantine.set_index("row")
    assert q.loc[1, "reasons"] == "out_of_range" and "9007199254740993" in q.loc[1, "details"]
    assert "beyond 2^53" in q.loc[1, "details"]
    assert q.loc[2, "reasons"] == "missing_required"
    assert q.loc[4, "reasons"] == "out_of_range"
    # 2**53 itself is exact: accepted with every digit
    assert r.site_months["admissions"].iloc[0] == 2**53
    assert r.site_months["admissions"].dtype == "int64"


@pytest.mark.parametrize("text, accepted", [
    ("9007199254740992", True), ("9007199254740993", False), ("9.007199254740993e15", False),
    ("-9007199254740993", False), ("9223372036854775807", False), ("1e300", False), ("1.0e3", True),
])
def test_counts_beyond_2_53_are_rejected_never_rounded(text, accepted):
    si = raw("sites")
    si.loc[0, "beds"] = text
    r = validate_frames(raw("episodes"), si, raw("site_months"))
    reconciles(r.summary)
    if accepted:
        from decimal import Decimal

        assert r.quarantine.empty
        assert r.sites["beds"].iloc[0] == int(Decimal(text))  # exactly the value in the file
    else:
        q = r.quarantine[r.quarantine.file == "sites.csv"]
        assert q["reasons"].tolist() == ["out_of_range"]
        assert f"beds='{text}'" in q["details"].iloc[0]


def test_extra_columns_named_like_quarantine_columns(tmp_path):
    """Input columns named file/row/key/reasons/details collided with the quarantine's own columns
    (InvalidIndexError when two tables had quarantined rows): the user's column and values are
    kept in the quarantine as input_<name>, and unchanged in the accepted data."""
    ep, sm = raw("episodes"), raw("site_months")
    for c in ("file", "row", "key", "reasons", "details"):
        ep[c] = [f"{c}-ep{i}" for i in range(len(ep))]
        sm[c] = [f"{c}-sm{i}" for i in range(len(sm))]
    sm["input_key"] = "taken"
    ep.loc[0, "age_years"] = "99"
    sm.loc[1, "admissions"] = "-1"
    r = validate_frames(ep, raw("sites"), sm)
    reconciles(r.summary)
    q = r.quarantine.set_index("file")
    assert q.loc["episodes.csv", "input_file"] == "file-ep0" and q.loc["episodes.csv", "row"] == 1
    assert q.loc["site_months.csv", "input_reasons"] == "reasons-sm1"
    assert q.loc["site_months.csv", "input_input_key"] == "key-sm1"  # input_key was taken
    assert q.loc["site_months.csv", "input_key"] == "taken"
    assert q.loc["episodes.csv", "reasons"] == "out_of_range"
    assert r.summary["files"]["episodes"]["extra_columns"] == ["file", "row", "key", "reasons", "details"]
    assert r.episodes["key"].tolist() == [f"key-ep{i}" for i in range(1, 12)]


def test_site_ids_cannot_escape():
    """Site ids are part of file names and links: anything but 1-32 of [A-Za-z0-9_-] is quarantined
    in sites, and that site's episodes and site-months follow it (unknown_site_id)."""
    hostile = ["../../../x", "a/b", "S 04", "<img src=x onerror=alert(1)>", "X" * 33, "S05\n",
               "S\u00e9", "..", "S06;rm"]
    fine = ["A" * 32, "a-b_C9"]
    si, ep, sm = raw("sites"), raw("episodes"), raw("site_months")
    for i, sid in enumerate(hostile + fine):
        si.loc[len(si)] = {**SITE_ROW, "site_id": sid}
        sm.loc[len(sm)] = {"site_id": sid, "month": "2017-01", "admissions": "5"}
        ep.loc[len(ep)] = {**ep.loc[0].to_dict(), "episode_id": f"H{i}", "site_id": sid}
    r = validate_frames(ep, si, sm)
    reconciles(r.summary)
    q = r.quarantine
    qs = q[q.file == "sites.csv"]
    assert (qs["reasons"] == "invalid_site_id").all() and len(qs) == len(hostile) - 1  # 'S05\n' is
    # 'S05' once surrounding whitespace is removed, as for every value
    assert "is not a valid site id (1 to 32 characters, each an ASCII letter, digit, '_' or '-')" in (
        qs["details"].iloc[0])
    for table in ("episodes.csv", "site_months.csv"):
        qt = q[q.file == table]
        assert (qt["reasons"] == "unknown_site_id").all() and len(qt) == len(hostile) - 1
        assert qt["details"].str.endswith("was quarantined in sites.csv").all()
    assert set(r.sites["site_id"]) == {"S01", "S02", "S03", "S05", *fine}
    assert all(contract.is_valid_site_id(s) for s in r.sites["site_id"])
    assert set(r.episodes["site_id"]) <= set(r.sites["site_id"])


def test_every_value_out_of_range_is_a_clear_fatal_error(tmp_path):
    d = extract(tmp_path)
    ep = raw("episodes")
    ep["death_time"] = "9999-12-31T00:00:00"  # a placeholder for "did not die"
    ep.to_csv(d / "episodes.csv", index=False)
    with pytest.raises(DataContractError) as err:
        validate_collaborative(d)
    assert (err.value.file, err.value.column) == ("episodes.csv", "death_time")
    assert "outside the supported date range 1677-09-21 to 2262-04-11" in err.value.message
    assert "left empty" in err.value.message


def _write(path: Path, data: bytes | str) -> None:
    path.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))


SITES_TEXT = (GOOD / "sites.csv").read_text(encoding="utf-8")
UNREADABLE = {
    # name: (bytes of sites.csv, words the message must contain)
    "utf16_bom": (SITES_TEXT.encode("utf-16"), ["UTF-16 encoded", "save it as UTF-8"]),
    "utf16_no_bom": (SITES_TEXT.encode("utf-16-le"), ["UTF-16 encoded", "save it as UTF-8"]),
    "utf32": (SITES_TEXT.encode("utf-32"), ["UTF-32 encoded"]),
    "utf32_no_bom": (SITES_TEXT.encode("utf-32-be"), ["UTF-32 encoded", "save it as UTF-8"]),
    "latin1": (SITES_TEXT.replace("Prairie", "Pr\u00e9rie").encode("latin-1"),
               ["not UTF-8", "line 3", "0xE9", "Windows-1252", "save it as UTF-8"]),
    "semicolon": (SITES_TEXT.replace(",", ";"), ["delimiter looks like ';'", "comma"]),
    "tab": (SITES_TEXT.replace(",", "\t"), ["delimiter looks like '\\t'"]),
    "ragged": (SITES_TEXT + "S04,New,2018-01-01,3,South,50,extra\n",
               ["line 5 has 7 value(s), but the header has 6", "double quotes"]),
    "semicolon_rows": (SITES_TEXT.split("\n", 1)[0] + "\n" + SITES_TEXT.split("\n", 1)[1].replace(",", ";"),
                       ["line 2 has 1 value(s)", "does not use commas"]),
    "truncated": (SITES_TEXT.rstrip("\n") + "\nS04,New,2018-0", ["line 5", "truncated"]),
    "unclosed_quote": (SITES_TEXT + 'S04,"New,2018-01-01,3,South,50\n', ["line", "never closed"]),
    "parquet_named_csv": (b"PAR1" + b"\x00" * 64 + b"PAR1", ["Parquet file", "rename it to .parquet"]),
    "xlsx_named_csv": (b"PK\x03\x04" + b"\x00" * 64, ["Excel", "CSV UTF-8"]),
    "gzip": (b"\x1f\x8b\x08" + b"\x00" * 64, ["gzip"]),
    "binary": (b"site_id\x00\x01\x02\x03" * 20, ["binary"]),
    "blank_first_line": ("\n" + SITES_TEXT, ["first line is blank"]),
    "whitespace_only": ("  \n\n", ["empty file"]),
    "header_spaces": (SITES_TEXT.replace("site_id,", " Site_ID,", 1),
                      ["missing contract column", "' Site_ID' for 'site_id'", "case-sensitive"]),
}


@pytest.mark.parametrize("case", sorted(UNREADABLE))
def test_unreadable_files_say_what_is_wrong(tmp_path, case):
    data, words = UNREADABLE[case]
    d = extract(tmp_path)
    _write(d / "sites.csv", data)
    with pytest.raises(DataContractError) as err:
        validate_collaborative(d)
    assert err.value.file == "sites.csv"
    for w in words:
        assert w in err.value.message, err.value.message


@pytest.mark.parametrize("case, words", [
    ("empty", ["empty file"]), ("garbage", ["not a Parquet file"]),
    ("truncated", ["truncated Parquet file"]), ("csv_text", ["not a Parquet file", "named .csv"]),
])
def test_unreadable_parquet_says_what_is_wrong(tmp_path, case, words):
    d = extract(tmp_path)
    (d / "site_months.csv").unlink()
    target = d / "site_months.parquet"
    raw("site_months").to_parquet(target)
    whole = target.read_bytes()
    target.write_bytes({"empty": b"", "garbage": b"\x00garbage" * 50, "truncated": whole[: len(whole) // 2],
                        "csv_text": (GOOD / "site_months.csv").read_bytes()}[case])
    with pytest.raises(DataContractError) as err:
        validate_collaborative(d)
    assert err.value.file == "site_months.parquet"
    for w in words:
        assert w in err.value.message, err.value.message


def test_parquet_binary_text_is_decoded_and_nested_values_are_fatal(tmp_path):
    """A Parquet text column without the UTF-8 annotation (binary) used to be stored as "b'E0001'";
    a column of lists was read as the text '[1]'."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    d = extract(tmp_path)
    (d / "episodes.csv").unlink()
    ep = raw("episodes")
    tab = pa.Table.from_pandas(ep, preserve_index=False)
    ids = pa.array([v.encode() for v in ep["episode_id"]], pa.binary())
    pq.write_table(tab.set_column(0, "episode_id", ids), d / "episodes.parquet")
    r = validate_collaborative(d)
    assert r.quarantine.empty and r.episodes["episode_id"].tolist() == ep["episode_id"].tolist()
    assert r.data_hash == validate_collaborative(GOOD).data_hash
    bad = pa.array([b"E\xff"] * len(ep), pa.binary())
    pq.write_table(tab.set_column(0, "episode_id", bad), d / "episodes.parquet")
    with pytest.raises(DataContractError, match="binary data that is not UTF-8") as err:
        validate_collaborative(d)
    assert err.value.column == "episode_id"
    nested = pa.array([[1]] * len(ep), pa.list_(pa.int64()))
    pq.write_table(tab.set_column(2, "site_id", nested), d / "episodes.parquet")
    with pytest.raises(DataContractError, match="not single values") as err:
        validate_collaborative(d)
    assert err.value.column == "site_id"


@pytest.mark.parametrize("newline", ["\r", "\r\n"])
def test_old_mac_and_windows_line_endings(tmp_path, newline):
    d = extract(tmp_path)
    for t in N_GOOD:
        text = (GOOD / f"{t}.csv").read_text(encoding="utf-8")
        (d / f"{t}.csv").write_bytes(text.replace("\n", newline).encode())
    r = validate_collaborative(d)
    assert r.quarantine.empty and r.data_hash == validate_collaborative(GOOD).data_hash
