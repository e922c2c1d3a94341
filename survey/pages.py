"""Server-rendered HTML of the rater and results pages.

Every link is relative to the page (the app may be mounted at any prefix, e.g.
``/survey`` inside the lab), every value is HTML-escaped, and the pages load nothing
from outside (inline CSS and a few lines of JavaScript).
"""

from __future__ import annotations

import html
import re
from urllib.parse import quote

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;background:#f6f7f9;color:#1d2430}
main{max-width:760px;margin:0 auto;padding:24px 16px}
h1{font-size:1.4rem} .muted{color:#5a6473;font-size:.95rem}
.card{background:#fff;border-radius:10px;padding:20px;box-shadow:0 1px 3px rgba(0,0,0,.08)}
.progress{font-size:.95rem;color:#5a6473;margin-bottom:6px}
.bar{height:6px;background:#e3e7ee;border-radius:3px;overflow:hidden;margin-bottom:16px}
.bar>div{height:100%;background:#3b6fd8}
.label{font-size:1.15rem;margin:4px 0 2px} .question{font-size:1.05rem;margin:0 0 16px}
.pair{display:flex;gap:16px;justify-content:center;flex-wrap:wrap}
.pair figure{margin:0;text-align:center}
.pair img{width:min(320px,42vw);height:auto;image-rendering:pixelated;border:1px solid #d5dae2;border-radius:6px;
background:#000}
.answers{display:flex;gap:12px;justify-content:center;margin-top:18px}
button{font-size:1.05rem;padding:10px 22px;border-radius:8px;border:1px solid #3b6fd8;background:#3b6fd8;color:#fff;
cursor:pointer} button.secondary{background:#fff;color:#3b6fd8} button:disabled{opacity:.5;cursor:wait}
table{border-collapse:collapse;margin:8px 0 16px} td,th{border:1px solid #d5dae2;padding:4px 8px;text-align:left}
.error{border-left:4px solid #c0392b}
.warning{border-left:4px solid #d68910;background:#fdf2e0;padding:8px 12px} code{background:#eef1f5;padding:1px 4px;border-radius:4px}
"""

SCRIPT = """
document.addEventListener('keydown', function (e) {
  var map = {ArrowLeft: 'L', ArrowRight: 'R', ArrowDown: 'S', s: 'S'};
  var b = map[e.key] && document.querySelector('button[value="' + map[e.key] + '"]');
  if (b && !b.disabled) { b.click(); }
});
var form = document.getElementById('vote');
if (form) form.addEventListener('submit', function (e) {
  var chosen = e.submitter;
  if (chosen) { var h = document.createElement('input'); h.type = 'hidden'; h.name = 'answer';
    h.value = chosen.value; form.appendChild(h); }
  form.querySelectorAll('button').forEach(function (b) { b.disabled = true; });
});
"""


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def page(title: str, body: str, script: bool = False, head: str = "") -> str:
    js = f"<script>{SCRIPT}</script>" if script else ""
    return (f"<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">{head}"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<meta name=\"referrer\" content=\"no-referrer\"><title>{esc(title)}</title><style>{STYLE}</style>"
            f"</head><body><main>{body}</main>{js}</body></html>")


def consent_page(token: str, total: int, question: str) -> str:
    body = f"""<div class="card"><h1>Image comparison survey</h1>
<p>You will see {total} pairs of small generated images, one pair at a time, together with the name of the
class the images are meant to show. For each pair, answer the question</p>
<p class="question"><strong>{esc(question)}</strong></p>
<p>by choosing <strong>Left</strong>, <strong>Right</strong> or <strong>Same</strong> (no preference). There are no
right or wrong answers for most pairs; a few pairs check attention. Please answer on your own and take the time you
need. You can stop and come back later with the same link; you will continue where you stopped.</p>
<p class="muted">We store your answers, the time of each answer and the name given with your invitation or the
participant id of the platform that sent you (if any), only for this study. Nothing else about you or your browser is recorded.</p>
<form method="post" action="{esc(token)}/consent"><button type="submit">I agree, start</button></form></div>"""
    return page("Image comparison survey", body)


def pair_page(token: str, impression: str, class_name: str, question: str, position: int, total: int) -> str:
    pct = 100 * (position - 1) / max(total, 1)
    img = f"../img/{esc(impression)}"
    body = f"""<div class="card"><div class="progress" id="progress">{position} of {total}</div>
<div class="bar"><div style="width:{pct:.1f}%"></div></div>
<p class="label">Class: <strong id="class-name">{esc(class_name)}</strong></p>
<p class="question">{esc(question)}</p>
<form method="post" action="{esc(token)}/vote" id="vote">
<input type="hidden" name="impression" value="{esc(impression)}">
<div class="pair"><figure><img src="{img}/left" alt="left image" id="left-image"><figcaption>Left</figcaption></figure>
<figure><img src="{img}/right" alt="right image" id="right-image"><figcaption>Right</figcaption></figure></div>
<div class="answers"><button type="submit" name="answer" value="L">Left</button>
<button type="submit" name="answer" value="S" class="secondary">Same</button>
<button type="submit" name="answer" value="R">Right</button></div></form>
<p class="muted">Keys: &larr; Left, &darr; Same, &rarr; Right.</p></div>"""
    return page(f"{position} of {total}", body, script=True)


def finish_page(answered: int) -> str:
    body = f"""<div class="card" id="finished"><h1>Thank you!</h1><p>You answered {answered} pairs. Your answers are
saved; you can close this page.</p></div>"""
    return page("Thank you", body)


def completion_page(answered: int, code: str, url: str | None, screened_out: bool) -> str:
    """The end of a study-link participation: the code to give the platform, and a
    redirect to the platform's completion URL when one is set."""
    head = "Thank you!" if not screened_out else "Thank you for taking part"
    what = "completion code" if not screened_out else "code"
    go = refresh = ""
    if url:
        go = (f'<p><a id="completion-link" href="{esc(url)}">Continue to the study platform</a>; you will be taken '
              'there in a few seconds.</p>')
        refresh = f'<meta http-equiv="refresh" content="3;url={esc(url)}">'

    body = f"""<div class="card" id="finished"><h1>{head}</h1><p>You answered {answered} pairs. Your answers are
saved.</p><p>Your {what}: <strong id="completion-code">{esc(code)}</strong></p>
<p class="muted">Enter it on the study platform if it asks for one.</p>{go}</div>"""
    return page("Thank you", body, head=refresh)


def study_full_page(message: str) -> str:
    body = f'<div class="card error" id="study-full"><h1>This study is full</h1><p id="error">{esc(message)}</p></div>'
    return page("Study full", body)


def error_page(message: str, back: str | None = None) -> str:
    link = f'<p><a href="{esc(back)}">Back to the survey</a></p>' if back else ""
    body = f'<div class="card error"><h1>Sorry</h1><p id="error">{esc(message)}</p>{link}</div>'
    return page("Survey", body)


ANSWER_WORDS = {"L": "Left", "R": "Right", "S": "Same"}

BUSY_SCRIPT = """
var left = RETRY_SECONDS, note = document.getElementById('countdown');
var again = document.getElementById('again');
var timer = setInterval(function () {
  left -= 1;
  if (note) { note.textContent = String(Math.max(left, 0)); }
  if (left <= 0) { clearInterval(timer); if (again) { again.requestSubmit ? again.requestSubmit() : again.submit(); }
                   else { location.reload(); } }
}, 1000);
"""


def busy_page(retry_after: int, action: str | None = None, fields: dict[str, str] | None = None) -> str:
    """The server could not write (the database was busy): nothing was saved; the page
    tries again by itself after ``retry_after`` seconds, re-posting ``fields`` to
    ``action`` (a form post), or reloading (a page view)."""
    answer = ANSWER_WORDS.get((fields or {}).get("answer", ""))
    what = f"Your answer ({answer}) was not saved yet." if answer else "Nothing was changed."
    form = ""
    if action is not None:
        hidden = "".join(f'<input type="hidden" name="{esc(k)}" value="{esc(v)}">' for k, v in (fields or {}).items())
        form = (f'<form method="post" action="{esc(action)}" id="again">{hidden}'
                '<button type="submit">Try again now</button></form>')
    else:
        form = '<p><a href="">Try again now</a></p>'
    body = (f'<div class="card error" id="busy"><h1>One moment</h1><p>The survey server is busy. {what} '
            f'This page tries again by itself in <span id="countdown">{int(retry_after)}</span> s.</p>{form}</div>')
    js = f"<script>{BUSY_SCRIPT.replace('RETRY_SECONDS', str(int(retry_after)))}</script>"
    return page("Survey busy", body).replace("</body>", js + "</body>")


def landing_page() -> str:
    return page("Survey", '<div class="card"><h1>Image comparison survey</h1><p>Please open the personal link you '
                          'were given.</p></div>')


# --------------------------------------------------------------------------- results
def _inline(text: str) -> str:
    text = esc(text)
    text = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", text)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", text)


def markdown_to_html(text: str) -> str:
    """The small Markdown subset of the report: headings, tables, lists, paragraphs."""
    out, table, items = [], [], []

    def flush() -> None:
        if table:
            rows = [r for r in table if not re.fullmatch(r"\|[-| :]+\|", r)]
            cells = [[c.strip() for c in r.strip("|").split("|")] for r in rows]
            head = "".join(f"<th>{_inline(c)}</th>" for c in cells[0])
            body = "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in row) + "</tr>" for row in cells[1:])
            out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
            table.clear()
        if items:
            out.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in items) + "</ul>")
            items.clear()

    for line in text.splitlines():
        if line.startswith("|"):
            table.append(line)
            continue
        if line.startswith("- "):
            items.append(line[2:])
            continue
        flush()
        if line.startswith("> "):
            out.append(f'<p class="warning">{_inline(line[2:])}</p>')
            continue
        heading = re.match(r"(#{1,4}) (.*)", line)
        if heading:
            level = len(heading.group(1))
            out.append(f"<h{level}>{_inline(heading.group(2))}</h{level}>")
        elif line.strip():
            out.append(f"<p>{_inline(line)}</p>")
    flush()
    return "\n".join(out)


def study_link_html(current: str, link: dict | None) -> str:
    """The study's public (crowdsourcing) link and its settings, or how to open one.
    ``link``: url, prolific_url, is_open, participants, quota, completion_code,
    completion_url, screenout_code (see ``survey.links.LinkInfo``)."""
    if link is None:
        return (f'<p id="study-link" class="muted">No public study link yet (one link for everybody on a crowdsourcing '
                f'platform): <code>survey open-link --study {esc(current)} --base-url https://HOST/survey</code>; '
                'personal links: the form below.</p>')
    quota = f"{link['participants']} of {link['quota']}" if link["quota"] else f"{link['participants']} (no quota)"
    state = "open" if link["is_open"] else "closed: no new participants"
    codes = f"completion code <code>{esc(link['completion_code'])}</code>"
    if link.get("completion_url"):
        codes += f", sent on to <code>{esc(link['completion_url'])}</code>"
    if link.get("screenout_code"):
        codes += f"; screen-out code <code>{esc(link['screenout_code'])}</code>"
    return (f'<div id="study-link"><p>Public study link ({esc(state)}; participants {esc(quota)}): '
            f'<code>{esc(link["url"])}</code></p><p class="muted">For Prolific, with its placeholders: '
            f'<code>{esc(link["prolific_url"])}</code>; {codes}.</p></div>')


def results_page(report_markdown: str, studies: list[str], current: str, counts: dict, links: list[str],
                 study_link: str = "") -> str:
    options = "".join(f'<option value="{esc(s)}"{" selected" if s == current else ""}>{esc(s)}</option>'
                      for s in studies)
    shown_links = "".join(f"<li><code>{esc(link)}</code></li>" for link in links)
    summary = ", ".join(f"{k.replace('_', ' ')}: {v}" for k, v in counts.items())
    body = f"""<div class="card"><h1>Survey results</h1>
<form method="get" action="results">Study: <select name="study">{options}</select> <button class="secondary">Show</button>
</form><p class="muted">{esc(summary)}</p>
<p><a href="results.json?study={esc(quote(current, safe=''))}">report as JSON</a> &middot;
<a href="votes.csv?study={esc(quote(current, safe=''))}">raw votes (CSV)</a></p>
{study_link}
<form method="post" action="invite"><input type="hidden" name="study" value="{esc(current)}">
New rater links: <input name="count" value="1" size="3"> <button class="secondary">Create</button></form>
{f"<ul>{shown_links}</ul>" if shown_links else ""}
<div id="report">{report_markdown}</div></div>"""
    return page("Survey results", body)


__all__ = ["busy_page", "completion_page", "consent_page", "error_page", "finish_page", "landing_page",
           "markdown_to_html", "pair_page", "results_page", "study_full_page", "study_link_html"]
