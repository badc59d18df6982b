"""The one ``key=value`` parser behind --param, --set, --do, --cells and --holdout: one rule set, and
errors that name the flag, the item and an example."""

from __future__ import annotations

import pytest

from causcell_bench.assignments import assignment_dict, parse_assignments, read_value
from causcell_bench.cli.core import parse_params
from causcell_bench.cli.grid import parse_holdout
from causcell_bench.counterfactual import parse_do, parse_filters
from causcell_bench.errors import BenchError
from causcell_bench.experiments.common import parse_options

DO = {"flag": "--do", "form": "concept=value", "example": "age=age_2", "several": True}


def test_reads_items_in_order() -> None:
    assert assignment_dict(["a=1", "b=x"], flag="--set", form="key=value", example="n=1") == {"a": "1", "b": "x"}
    assert assignment_dict("a=1,b=2", **DO) == {"a": "1", "b": "2"}
    assert assignment_dict(None, **DO) == {}
    assert assignment_dict([], **DO) == {}


@pytest.mark.parametrize("item", ["", "  ", "a=1,", "a=1,,b=2", ",a=1"])
def test_an_empty_item_or_part_is_an_error(item: str) -> None:
    with pytest.raises(BenchError, match="empty") as e:
        assignment_dict([item], **DO)
    # the flag, the item as given and an example
    assert "--do" in str(e.value) and repr(item) in str(e.value) and "e.g. --do age=age_2" in str(e.value)


@pytest.mark.parametrize(("item", "reason"), [
    ("age", "has no '='"),
    ("=x", "nothing before '='"),
    ("age=", "no value after '='"),
    ("age = ", "no value after '='"),
])
def test_missing_parts_are_errors(item: str, reason: str) -> None:
    with pytest.raises(BenchError, match=reason) as e:
        assignment_dict([item], **DO)
    assert str(e.value).startswith(f"cannot read --do {item!r}") and "concept=value" in str(e.value)


def test_equals_inside_a_value_belongs_to_the_value() -> None:
    assert assignment_dict(["expr=a=b"], **DO) == {"expr": "a=b"}
    assert parse_options(["formula=y=x+1"]) == {"formula": "y=x+1"}
    assert parse_holdout("cell_type=CD4=T") == {"cell_type": "CD4=T"}


def test_whitespace_around_keys_values_and_parts_is_ignored() -> None:
    assert assignment_dict(["  age =  age_2 ,  domain=d 1 "], **DO) == {"age": "age_2", "domain": "d 1"}
    assert parse_filters([" celltype = a , b "]) == {"celltype": ["a", "b"]}
    assert parse_params([" CausCell . n_steps = 500 "]) == {"CausCell": {"n_steps": 500}}


def test_a_key_given_twice() -> None:
    assert assignment_dict(["age=a", "age=a"], **DO) == {"age": "a"}  # the same value: counted once
    for items in (["age=a", "age=b"], ["age=a,age=b"]):
        with pytest.raises(BenchError, match=r"--do gives age twice \('a' and 'b'\); give one value, e.g. --do"):
            assignment_dict(items, **DO)
    with pytest.raises(BenchError, match="twice"):
        parse_options(["n=1", "n=2"])
    with pytest.raises(BenchError, match="twice"):
        parse_holdout("a=x,a=y")
    with pytest.raises(BenchError, match=r"CausCell.n_steps twice"):  # method names match case-insensitively
        parse_params(["CausCell.n_steps=5", "causcell.n_steps=6"])
    # multi-valued keys merge instead
    assert parse_filters(["c=a,b", "c=b,d", "e=f"]) == {"c": ["a", "b", "d"], "e": ["f"]}
    with pytest.raises(BenchError, match="empty value"):
        parse_filters(["c=a,,b"])


def test_dotted_keys() -> None:
    rules = {"flag": "--param", "form": "Method.name=value", "example": "CausCell.n_steps=500", "typed": True}
    [a] = parse_assignments(["CausCell.n_steps=500"], dotted="required", **rules)
    assert (a.owner, a.key, a.value, a.item) == ("CausCell", "n_steps", 500, "CausCell.n_steps=500")
    for bad in ("n_steps=500", ".n_steps=5", "CausCell.=5"):
        with pytest.raises(BenchError, match="not of the form Method.name") as e:
            parse_assignments([bad], dotted="required", **rules)
        assert "e.g. --param CausCell.n_steps=500" in str(e.value)
    [a, b] = parse_assignments(["n_steps=5", "CausCell.lr=0.1"], dotted="optional", **rules)
    assert (a.owner, a.key, b.owner, b.key) == (None, "n_steps", "CausCell", "lr")


def test_values_are_typed_only_where_the_flag_says() -> None:
    assert parse_options(["n=1000", "f=0.5", "b=true", 'v=["age_1"]', "s=text", 'e=""', "z=null"]) == {
        "n": 1000, "f": 0.5, "b": True, "v": ["age_1"], "s": "text", "e": "", "z": None}
    assert parse_do(["age=1"]) == {"age": "1"}  # labels stay text
    assert read_value("[1,") == "[1,"


def test_the_flags_wrappers() -> None:
    assert parse_do("age=a, domain=b") == {"age": "a", "domain": "b"}
    with pytest.raises(BenchError, match="no intervention"):
        parse_do([])
    assert parse_params(["CausCell.n_steps=500", "scVI.n_latent=5", "CausCell.mode=exogenous"]) == {
        "CausCell": {"n_steps": 500, "mode": "exogenous"}, "scVI": {"n_latent": 5}}
    with pytest.raises(BenchError, match="Method.name=value"):
        parse_params(["n_latent"])
    with pytest.raises(BenchError, match="--holdout"):
        parse_holdout("age")
    with pytest.raises(BenchError, match=r"column=value\[,value...\], e.g. --cells celltype=type_1"):
        parse_filters(["celltype"])
    with pytest.raises(BenchError, match="key=value, e.g. --set n_cells=1000"):
        parse_options(["n_cells"])


def test_quoted_keys_and_values_hold_commas_equals_signs_and_spaces() -> None:
    assert parse_do('cell_type="T, CD4"') == {"cell_type": "T, CD4"}
    assert parse_do(' cell_type = "T, CD4" , condition=stim') == {"cell_type": "T, CD4", "condition": "stim"}
    assert parse_holdout('"cell, type"="a=b",condition=" stim "') == {"cell, type": "a=b", "condition": " stim "}
    assert parse_filters(['celltype="T, CD4",B', 'celltype="B"']) == {"celltype": ["T, CD4", "B"]}
    assert parse_do('label="say ""hi"""') == {"label": 'say "hi"'}  # "" inside quotes: one quote
    # a quote opens only at the start of a key or value: labels with a quote inside read as before
    assert parse_do('label=say "hi"') == {"label": 'say "hi"'}
    assert parse_do('label="a"b') == {"label": '"a"b'}


def test_an_unquoted_comma_in_a_value_suggests_quoting() -> None:
    with pytest.raises(BenchError, match=r"""'CD4' has no '=' \(a value holding a comma goes in double quotes"""):
        parse_do("cell_type=T, CD4")
    with pytest.raises(BenchError, match=r"'cell_type' has no '='; write it"):  # no comma: no quoting hint
        parse_do("cell_type")


def test_a_quote_left_open_or_an_empty_quoted_value_is_an_error() -> None:
    with pytest.raises(BenchError, match=r"""cannot read --do 'cell_type="T, CD4': the double quote at '"T, CD4' is """
                                         r"""not closed \(inside quotes, write a " as ""\)"""):
        parse_do('cell_type="T, CD4')
    with pytest.raises(BenchError, match="no value after '='"):
        parse_do('cell_type=""')
    with pytest.raises(BenchError, match="an empty value"):
        parse_filters(['celltype=a,""'])


def test_typed_flags_leave_quotes_to_json() -> None:
    assert parse_options(['s="5"', "n=5", 'e=""', 'v=["a,b", "c"]']) == {"s": "5", "n": 5, "e": "", "v": ["a,b", "c"]}
    assert parse_params(['CausCell.mode="exogenous"']) == {"CausCell": {"mode": "exogenous"}}


def test_format_do_reads_back() -> None:
    from causcell_bench.counterfactual import format_do

    for do in ({"age": "a", "domain": "b"}, {"cell_type": "T, CD4", "x": "a=b", "q": 'say "hi"', "s": " NK "}):
        assert parse_do(format_do(do)) == do
    assert format_do({"age": "a", "domain": "b"}) == "age=a,domain=b"
