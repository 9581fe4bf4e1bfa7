"""tokenizer-demo against the reference tokenizer ids, the rendered chat
templates, and Python's jinja2 (configured as transformers configures it)
as the oracle for template features."""
import datetime
import json
import random
import subprocess
import unicodedata

import jinja2
import jinja2.ext
import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment

from conftest import run

NOW = "2026-11-22 12:00:00"


def demo(bin_dir, *args, lines):
    inp = "".join(json.dumps(x) + "\n" for x in lines)
    out = run(bin_dir / "tokenizer-demo", *args, input=inp.encode()).stdout.decode().splitlines()
    assert len(out) == len(lines)
    return [json.loads(o) for o in out]


@pytest.fixture(scope="module")
def model(ref_dir):
    return ref_dir / "tinyA-q8_0.gguf"


def test_reference_ids_and_decode(bin_dir, ref_dir, model):
    ref = json.loads((ref_dir / "tokenizer_ref.json").read_text())
    ids = demo(bin_dir, "--model", model, "--jsonl", lines=[r["text"] for r in ref])
    wrong = [r["text"] for r, got in zip(ref, ids) if got != r["ids"]]
    assert not wrong, f"{len(wrong)} of {len(ref)} differ, first: {wrong[0]!r}"
    texts = demo(bin_dir, "--model", model, "--decode", lines=[r["ids"] for r in ref])
    assert [t for t, r in zip(texts, ref) if t != r["decoded"]] == []


def random_text(rng, n):
    """Random valid UTF-8 from several scripts, emoji, combining marks,
    whitespace and special-token fragments."""
    pools = ["abc XYZ 019 .,;'\"!?", "\t\n\r  \u3000\u00a0", "éüßçøñ", "\u0301\u0308\u093c", "日本語中文한국어",
             "Кириллица", "العربية", "हिन्दी", "😀🎉👍🏽", "<|im_start|><think></think>", "\x00\x01\x7f"]
    out = []
    while len(out) < n:
        pool = rng.choice(pools)
        out.append(rng.choice(pool))
    return "".join(out)


def test_roundtrip_random_utf8(bin_dir, model):
    """decode(encode(s)) == NFC(s): the model's normalizer is NFC, so text
    comes back in composed form, as with transformers."""
    rng = random.Random(1234)
    texts = [random_text(rng, rng.randint(0, 200)) for _ in range(400)]
    ids = demo(bin_dir, "--model", model, "--jsonl", lines=texts)
    back = demo(bin_dir, "--model", model, "--decode", lines=ids)
    for s, b in zip(texts, back):
        assert b == unicodedata.normalize("NFC", s)


def test_cli(bin_dir, model):
    out = run(bin_dir / "tokenizer-demo", "--model", model, "Hello<|im_end|>").stdout.decode()
    assert "151645" in out and "tokens" in out
    p = subprocess.run([bin_dir / "tokenizer-demo", "--model", "/nonexistent.gguf", "x"], capture_output=True, text=True)
    assert p.returncode == 1 and p.stderr.startswith("tokenizer-demo: gguf: /nonexistent.gguf")


def test_chat_templates_reference(bin_dir, ref_dir):
    rows = json.loads((ref_dir / "chat_templates_ref.json").read_text())
    by_template = {}
    for r in rows:
        by_template.setdefault(r["template"], []).append(r)
    for name, group in by_template.items():
        got = demo(bin_dir, "--render", ref_dir / "chat_templates" / f"{name}.jinja", "--now", NOW,
                   lines=[r["vars"] for r in group])
        for r, g in zip(group, got):
            if "error" in r:
                assert g == {"error": r["error"]}, name
            else:
                assert g == r["rendered"], name


def test_qwen3_chat_reference(bin_dir, ref_dir, model):
    """chat_ref.json: the GGUF's own template, rendered and tokenized."""
    chat = json.loads((ref_dir / "chat_ref.json").read_text())
    template = ref_dir / "chat_templates" / "Qwen-Qwen3-0.6B.jinja"
    rendered = demo(bin_dir, "--render", template,
                    lines=[{k: v for k, v in c.items() if k not in ("rendered", "ids")} for c in chat])
    assert rendered == [c["rendered"] for c in chat]
    ids = demo(bin_dir, "--model", model, "--jsonl", lines=rendered)
    assert ids == [c["ids"] for c in chat]


# ---- jinja2 as the oracle ----

def hf_environment():
    def raise_exception(msg):
        raise jinja2.exceptions.TemplateError(msg)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.datetime(2026, 11, 22, 12, 0, 0).strftime(fmt)
    return env


MSGS = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi \"there\" — ok?"},
        {"role": "assistant", "content": "<think>\nhm\n</think>\n\nHello!",
         "tool_calls": [{"function": {"name": "f", "arguments": {"x": 1, "y": [1.5, None, True]}}}]}]
VARS = {"messages": MSGS, "n": 7, "f": 2.5, "s": "  Hello World  ", "xs": [3, 1, 2], "d": {"b": 1, "a": [1, 2]},
        "empty": [], "none": None, "t": True, "u8": "héllo wörld 日本"}

FEATURES = [
    "{{ n + 1 }} {{ n - 10 }} {{ n * f }} {{ n / 2 }} {{ n // 2 }} {{ -n // 2 }} {{ n % 3 }} {{ -7 % 3 }} {{ 2 ** 8 }}",
    "{{ 1.0 }} {{ 0.1 + 0.2 }} {{ 1e20 }} {{ 1e-7 }} {{ 123456789.125 }} {{ f * 1e16 }}",
    "{{ s | trim }}|{{ s.strip() }}|{{ s.lstrip() }}|{{ s.rstrip() }}|{{ 'xxhixx'.strip('x') }}",
    "{{ s.split() }} {{ 'a,b,,c'.split(',') }} {{ 'a b c'.split(' ', 1) }} {{ u8.split() }}",
    "{{ s.upper() }}{{ s.lower() }}{{ 'hello world'.title() }}{{ 'hELLO'.capitalize() }}{{ s | upper }}",
    "{{ 'abc'[::-1] }}{{ u8[::-1] }}{{ xs[1:] }}{{ xs[:-1] }}{{ xs[::2] }}{{ xs[-1] }}{{ u8[1:4] }}{{ xs[5] }}",
    "{{ 'ab' in 'cabd' }}{{ 2 in xs }}{{ 'a' in d }}{{ 'z' not in d }}{{ 5 not in xs }}",
    "{{ 'x' ~ n ~ none ~ t }}|{{ 'a' + 'b' }}|{{ xs + [9] }}|{{ 'ab' * 3 }}",
    "{{ xs | length }}{{ u8 | length }}{{ d | length }}{{ xs | first }}{{ xs | last }}{{ xs | sort }}{{ xs | sort(reverse=true) }}",
    "{{ xs | join(', ') }}|{{ d | items | list }}|{{ d.items() | list }}|{{ d.keys() | list }}|{{ d.values() | list }}",
    "{{ d | tojson }}|{{ MSGS | tojson }}|{{ d | tojson(indent=2) }}|{{ d | tojson(sort_keys=true) }}",
    "{{ d | tojson(separators=(',', ':')) }}|{{ u8 | tojson }}|{{ 'tab\\there\\nnl\\\\' | tojson }}|{{ none | tojson }}",
    "{{ d }}|{{ xs }}|{{ MSGS[1] }}|{{ [none, true, 1.5, 'it\\'s', \"q\\\"\"] }}|{{ none }}|{{ t }}",
    "{% for m in messages %}{{ loop.index }}/{{ loop.length }}{{ loop.first }}{{ loop.last }}{{ loop.revindex0 }}:{{ m.role }}\n{% endfor %}",
    "{% for m in messages if m.role != 'system' %}{{ loop.index0 }}{{ m.role }}{% else %}none{% endfor %}{% for x in empty %}x{% else %}E{% endfor %}",
    "{% for k, v in d.items() %}{{ k }}={{ v }};{% endfor %}{% for x in xs %}{% if x == 1 %}{% continue %}{% endif %}{{ x }}{% if x == 2 %}{% break %}{% endif %}{% endfor %}",
    "{% for x in xs %}{{ loop.previtem }}-{{ loop.nextitem }};{% endfor %}",
    "{% set ns = namespace(total=0, seen=false) %}{% for x in xs %}{% set ns.total = ns.total + x %}{% endfor %}{{ ns.total }}{{ ns.seen }}",
    "{% set x = 1 %}{% for i in xs %}{% set x = x + i %}{% endfor %}{{ x }}{% if true %}{% set y = 5 %}{% endif %}{{ y }}",
    "{% set a, b = [1, 2] %}{{ a }}{{ b }}{% set blk %}inner {{ n }}{% endset %}[{{ blk }}]",
    "{% macro greet(name, punct='!') %}Hi {{ name }}{{ punct }}{% endmacro %}{{ greet('A') }} {{ greet('B', '?') }} {{ greet(punct='.', name='C') }}",
    "{% macro rec(k) %}{% if k > 0 %}{{ k }}{{ rec(k - 1) }}{% endif %}{% endmacro %}{{ rec(5) }}",
    "{{ 'yes' if t else 'no' }} {{ 'yes' if none else 'no' }} {{ n if n > 100 }}|{{ (1, 2) }}",
    "{{ none is none }}{{ n is number }}{{ n is integer }}{{ f is float }}{{ s is string }}{{ d is mapping }}{{ xs is iterable }}{{ xs is sequence }}{{ u is defined }}{{ n is not defined }}{{ n is odd }}{{ n is even }}{{ 9 is divisibleby 3 }}{{ t is true }}{{ t is boolean }}",
    "{{ xs | select('odd') | list }}{{ xs | reject('odd') | list }}{{ messages | selectattr('role', 'equalto', 'user') | list | length }}{{ messages | rejectattr('tool_calls') | map(attribute='role') | join(',') }}",
    "{{ messages | map(attribute='role') | list }}{{ xs | map('string') | join('-') }}{{ xs | sum }}{{ [1, 1, 2] | unique | list }}",
    "{{ u | default('dflt') }}{{ '' | default('empty', true) }}{{ n | default(3) }}{{ '42' | int + 1 }}{{ 3.9 | int }}{{ '2.5' | float }}{{ -3 | abs }}{{ 2.567 | round(2) }}",
    "{{ 'a-b-c'.replace('-', '+') }}{{ s | replace('l', 'L') }}{{ 'abc'.startswith('ab') }}{{ 'abc'.endswith(('x', 'c')) }}{{ 'abcabc'.find('c') }}{{ 'abcabc'.count('b') }}",
    "{{ d.get('b') }}{{ d.get('zz') }}{{ d.get('zz', 'fallback') }}{{ d['a'][1] }}{{ d.a }}{{ messages[0]['role'] }}{{ messages[2].tool_calls[0].function.arguments | tojson }}",
    "  {% if t %}\n  indented\n  {% endif %}\n{%- for x in xs -%}\n  [{{ x }}]\n{%- endfor %}\n  {{- 'stripped' -}}  \n after",
    "{# comment #}\n  {# indented comment #}\nline{%+ if t %} keep{% endif +%}\nend{% raw %}{{ not parsed }}{% endraw %}",
    "{{ strftime_now('%Y-%m-%d %A %B') }}|{{ range(3) | list }}{{ range(1, 10, 3) | list }}|{{ dict(a=1, b=2) }}",
    "{% if messages[0].role == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}",
    "{{ undefined_var.attr }}",
    "{{ messages[0].content | trim | length > 3 and not none or 'x' }}|{{ 1 < 2 < 3 }}|{{ [1, 2] < [1, 3] }}|{{ 'a' < 'b' }}",
    "{{ n | string + 'x' }}{{ (n | string)[0] }}{{ xs | list | length }}{{ 'abc' | list }}{{ d | list }}{{ u8 | upper }}",
    "{{ '%s' }}{{ '{' }}{{ '}' }}{{ \"{{ x }}\" }}{{ '%}' }}",
    "{%- for m in messages %}{%- if m.content is string %}{{- m.content.split('</think>')[-1].lstrip('\\n') }}{%- endif %}{% endfor %}",
]


@pytest.mark.parametrize("idx", range(len(FEATURES)))
def test_template_features_match_jinja2(bin_dir, tmp_path, idx):
    src = FEATURES[idx]
    env = hf_environment()
    try:
        want = env.from_string(src).render(**VARS, MSGS=MSGS)
        err = None
    except Exception as e:  # the engine must fail too
        want, err = None, e
    tmpl = tmp_path / "t.jinja"
    tmpl.write_text(src)
    got = demo(bin_dir, "--render", tmpl, "--now", NOW, lines=[dict(VARS, MSGS=MSGS)])[0]
    if err is not None:
        assert isinstance(got, dict) and "error" in got, f"jinja2 raised {err!r}, we rendered {got!r}"
        if isinstance(err, jinja2.exceptions.TemplateError) and type(err) is jinja2.exceptions.TemplateError:
            assert got["error"] == f"TemplateError: {err}"
    else:
        assert got == want


def test_template_syntax_errors(bin_dir, tmp_path):
    for src in ["{% if x %}", "{{ x ", "{% for %}", "{{ 1 + }}", "{% endfor %}", "{% unknown %}", "{{ (((( }}",
                "{{" + "(" * 1000 + "1" + ")" * 1000 + "}}", "{% if 1 %}" * 500]:
        tmpl = tmp_path / "bad.jinja"
        tmpl.write_text(src)
        got = demo(bin_dir, "--render", tmpl, lines=[{}])[0]
        assert isinstance(got, dict) and got["error"].startswith("TemplateSyntaxError"), src[:40]
