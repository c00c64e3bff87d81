"""The adjudication web app: log-in with an API key, the queue, the case view, decisions,
and the images (each fetched through the case that names it, so a page shows only what
the key's partitions may see).

Handlers that read the store or draw run on Starlette's thread pool, never on the event
loop. Every page view and decision is audited in the service's chain, like the RPCs (names
``web:ListCases``, ``web:GetCase``, ``web:DecideCase``, ``web:Login``). Sessions live in
this process's memory only: the cookie carries a random token, the key stays here, and
each request asks the access store again, so a revoked key stops at its next click.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from matcher.cases import PAIRWISE, Actor, Case, CaseState, Verdict
from matcher.engine import sample_name
from matcher.errors import TambuaError
from tambua.auth import ALL_PARTITIONS, DEV_PRINCIPAL, Principal
import tambua.web.render as render

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
COOKIE = "tambua_session"
ROLES = frozenset({"adjudicator", "admin"})
IDLE_S = 30 * 60  # a session unused this long is gone
MAX_S = 8 * 3600  # and any session after a working day
PAGE = 50
_VIEWS = {"face": ("original",), "finger": ("original", "enhanced", "minutiae"),
          "iris": ("original", "segmented", "strip")}
_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'self'; img-src 'self'; script-src 'self'; style-src 'self'; "
                               "frame-ancestors 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


@dataclass
class _Session:
    key: str | None  # the API key, in this process's memory only (None: insecure mode)
    csrf: str
    started: float
    seen: float


class _Headers(BaseHTTPMiddleware):
    async def dispatch(self, request, call_next):
        response = await call_next(request)
        for k, v in _HEADERS.items():
            response.headers.setdefault(k, v)
        return response


class _Web:
    """The app's state: the engine (store, decisions), principals, the audit chain."""

    def __init__(self, engine, access, audit, iris_review=None, site: str = "", secure: bool = True) -> None:
        self.engine, self.access, self.audit = engine, access, audit
        self.iris_review = iris_review  # IrisExtractor.review, or None
        self.site, self.secure = site, secure
        self.sessions: dict[str, _Session] = {}
        self.lock = threading.Lock()
        self.templates = Jinja2Templates(directory=str(HERE / "templates"))
        self.templates.env.globals.update(one_in=render.one_in, coincidence=render.coincidence,
                                          sample_name=sample_name, age=_age)

    # --- who is asking -------------------------------------------------------------------

    def _session(self, request: Request) -> _Session | None:
        token = request.cookies.get(COOKIE, "")
        now = time.monotonic()
        with self.lock:
            s = self.sessions.get(token)
            if s is None or now - s.seen > IDLE_S or now - s.started > MAX_S:
                self.sessions.pop(token, None)
                return None
            s.seen = now
            return s

    def principal(self, request: Request) -> tuple[Principal | None, _Session | None]:
        if self.access is None:  # insecure development mode: everyone is the dev principal
            return DEV_PRINCIPAL, self._dev_session()
        s = self._session(request)
        return (None, None) if s is None else (self.access.by_key(s.key), s)

    def _dev_session(self) -> _Session:
        with self.lock:
            s = self.sessions.get("dev")
            if s is None:
                s = self.sessions["dev"] = _Session(None, secrets.token_urlsafe(24), time.monotonic(), time.monotonic())
            return s

    def audit_entry(self, who: Principal | None, rpc: str, partition: str, ids, outcome: str) -> None:
        if self.audit is not None:
            self.audit.append(who.id if who else "", who.name if who else "unauthenticated", rpc, partition,
                              tuple(i for i in ids if i), outcome)

    @staticmethod
    def partitions(who: Principal) -> list[str] | None:
        return None if ALL_PARTITIONS in who.partitions else sorted(who.partitions)

    def page(self, request: Request, name: str, status: int = 200, **context) -> HTMLResponse:
        return self.templates.TemplateResponse(request, name, {"insecure": self.access is None, **context},
                                               status_code=status)

    def refuse(self, request: Request, who: Principal | None, why: str, status: int = 403) -> Response:
        if who is None:
            return RedirectResponse("/login", status_code=303)
        return self.page(request, "error.html", status, who=who, message=why)

    def admitted(self, request: Request, rpc: str) -> tuple[Principal | None, _Session | None, Response | None]:
        """The caller if it may use these pages, else the response that says why (a refusal
        is audited as ``rpc``)."""
        who, session = self.principal(request)
        if who is None:
            return None, None, RedirectResponse("/login", status_code=303)
        if not who.roles & ROLES:
            self.audit_entry(who, rpc, "", (), "PERMISSION_DENIED")
            return who, session, self.refuse(request, who, f"These pages need the role adjudicator or admin; "
                                                           f"{who.name!r} has {', '.join(sorted(who.roles))}.")
        return who, session, None

    # --- pages ---------------------------------------------------------------------------

    async def login(self, request: Request) -> Response:
        if self.access is None:
            return RedirectResponse("/", status_code=303)
        if request.method == "GET":
            return self.page(request, "login.html")
        form = await request.form()
        return await run_in_threadpool(self._login, str(form.get("api_key", "")).strip(), request)

    def _login(self, key: str, request: Request) -> Response:
        who = self.access.by_key(key) if key else None
        self.audit_entry(who, "web:Login", "", (), "OK" if who else "UNAUTHENTICATED")
        if who is None:
            time.sleep(0.5)  # guessing keys costs time (and each try is in the audit chain)
            return self.page(request, "login.html", 401, message="Unknown or revoked key.")
        token = secrets.token_urlsafe(32)
        now = time.monotonic()
        with self.lock:
            for old in [t for t, s in self.sessions.items() if now - s.seen > IDLE_S or now - s.started > MAX_S]:
                del self.sessions[old]
            self.sessions[token] = _Session(key, secrets.token_urlsafe(24), now, now)
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(COOKIE, token, max_age=MAX_S, httponly=True, secure=self.secure, samesite="strict")
        return response

    async def logout(self, request: Request) -> Response:
        with self.lock:
            self.sessions.pop(request.cookies.get(COOKIE, ""), None)
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(COOKIE)
        return response

    def queue(self, request: Request) -> Response:
        who, session, refused = self.admitted(request, "web:ListCases")
        if refused:
            return refused
        allowed = self.partitions(who)
        store = self.engine.store
        wanted = request.query_params.get("partition", "")
        if wanted and allowed is not None and wanted not in allowed:
            return self.refuse(request, who, f"{who.name!r} may not see partition {wanted!r}.")
        scope = [wanted] if wanted else allowed
        source = request.query_params.get("source", "")
        cases, after = store.cases(scope, CaseState.OPEN, source, after=request.query_params.get("after", ""),
                                   limit=PAGE)
        counts = store.case_counts(allowed)
        self.audit_entry(who, "web:ListCases", wanted, (c.subject_id for c in cases), "OK")
        by_partition: dict[str, dict[str, int]] = {}
        for (p, s), n in sorted(counts.items()):
            by_partition.setdefault(p, {})[s] = n
        sources = sorted({s for _, s in counts})
        more = urlencode({k: v for k, v in (("partition", wanted), ("source", source), ("after", after)) if v})
        return self.page(request, "queue.html", who=who, csrf=session.csrf, cases=cases, now_ms=_now_ms(),
                         by_partition=by_partition, sources=sources, total=sum(counts.values()),
                         partition=wanted, source=source, next_url=f"/?{more}" if after else "",
                         flash=request.query_params.get("done", ""))

    def _case(self, request: Request, who: Principal, case_id: str) -> tuple[str, Case]:
        partition = request.query_params.get("partition", "") or "default"
        if not who.may_use(partition):
            raise _Denied(f"{who.name!r} may not see partition {partition!r}.")
        return partition, self.engine.store.case(partition, case_id)

    def case(self, request: Request) -> Response:
        who, session, refused = self.admitted(request, "web:GetCase")
        if refused:
            return refused
        case_id = request.path_params["case_id"]
        try:
            partition, case = self._case(request, who, case_id)
        except _Denied as e:
            self.audit_entry(who, "web:GetCase", request.query_params.get("partition", ""), (), "PERMISSION_DENIED")
            return self.refuse(request, who, str(e))
        except TambuaError as e:
            self.audit_entry(who, "web:GetCase", request.query_params.get("partition", ""), (), e.reason)
            return self.page(request, "error.html", 404, who=who, message="No such case in your partitions.")
        n = len(case.candidates)
        try:
            hit = min(max(int(request.query_params.get("hit", "1")), 1), max(n, 1))
        except ValueError:
            hit = 1
        view = _CaseView.build(self.engine, partition, case, hit)
        self.audit_entry(who, "web:GetCase", partition,
                         (case.subject_id, view.candidate.subject_id if view.candidate else ""), "OK")
        return self.page(request, "case.html", who=who, csrf=session.csrf, case=case, view=view, hit=hit, n=n,
                         partition=partition, now_ms=_now_ms(), views=_VIEWS, message=request.query_params.get("m", ""),
                         pairwise=case.kind in PAIRWISE)

    async def decide(self, request: Request) -> Response:
        form = await request.form()
        return await run_in_threadpool(self._decide, request, form)

    def _decide(self, request: Request, form) -> Response:
        who, session, refused = self.admitted(request, "web:DecideCase")
        if refused:
            return refused
        case_id = request.path_params["case_id"]
        partition = str(form.get("partition", "")) or "default"
        if not secrets.compare_digest(str(form.get("csrf", "")), session.csrf):
            return self.refuse(request, who, "This form has expired: reload the case and decide again.")
        if not who.may_use(partition):
            self.audit_entry(who, "web:DecideCase", partition, (), "PERMISSION_DENIED")
            return self.refuse(request, who, f"{who.name!r} may not see partition {partition!r}.")
        verdict = str(form.get("verdict", ""))
        subject_id = str(form.get("subject_id", ""))
        back = f"/cases/{case_id}?" + urlencode({"partition": partition, "hit": form.get("hit", "1")})
        try:
            decided = self.engine.decide(partition, case_id, verdict, str(form.get("reason", "")),
                                         Actor(who.id, who.name, self.site),
                                         subject_id=subject_id if verdict == Verdict.SAME else "",
                                         attach=form.get("discard") != "1")
        except TambuaError as e:
            self.audit_entry(who, "web:DecideCase", partition, (subject_id,), e.reason)
            return RedirectResponse(back + "&" + urlencode({"m": e.message}), status_code=303)
        d = decided.decision
        self.audit_entry(who, "web:DecideCase", partition,
                         (decided.subject_id, *(c.subject_id for c in decided.candidates)), "OK")
        what = {Verdict.SAME: f"same person as {d.subject_id}" + ("" if d.attached else " (capture discarded)"),
                Verdict.DIFFERENT: f"different people: {d.subject_id} enrolled",
                Verdict.RECAPTURE: "withdrawn: capture again"}[d.verdict]
        return RedirectResponse("/?" + urlencode({"done": f"Case {case_id}: {what}."}), status_code=303)

    def image(self, request: Request) -> Response:
        who, _, refused = self.admitted(request, "web:GetCase")
        if refused:
            return Response(status_code=403)
        try:
            partition, case = self._case(request, who, request.path_params["case_id"])
            q = request.query_params
            body = _CaseView.image(self.engine, partition, case, q.get("who", "probe"), q.get("modality", ""),
                                   int(q.get("position", "0")), q.get("view", "original"), int(q.get("hit", "1")),
                                   self.iris_review)
        except (_Denied, TambuaError, ValueError, KeyError) as e:
            log.info("image refused: %s", type(e).__name__)  # never the image, never the ids
            return Response(status_code=404)
        return Response(body, media_type="image/png")


class _Denied(Exception):
    pass


def _now_ms() -> int:
    return int(time.time() * 1000)


def _age(ms: int, now_ms: int) -> str:
    s = max(0, (now_ms - ms) // 1000)
    for size, unit in ((86400, "d"), (3600, "h"), (60, "min")):
        if s >= size:
            return f"{s // size} {unit}"
    return f"{s} s"


@dataclass(frozen=True)
class _Panel:
    modality: str
    position: int
    score: float | None  # -log10 FMR of this sample against the candidate's; None: not compared
    fmr: float | None
    probe: bool  # the probe has a template there
    hit: bool
    probe_image: bool  # an image is kept
    hit_image: bool
    pairs: int = 0  # fingers: MCC's matched pairs


@dataclass(frozen=True)
class _CaseView:
    candidate: object | None  # CaseCandidate
    enrolled: bool  # the candidate is still enrolled
    panels: tuple[_Panel, ...]

    @classmethod
    def build(cls, engine, partition: str, case: Case, hit: int) -> "_CaseView":
        store = engine.store
        cand = case.candidates[hit - 1] if case.candidates else None
        held, held_images = engine.capture(partition, case)
        probe = {(t.modality, t.position): t for t in held}
        probe_images = {(i.modality, i.position) for i in held_images}
        theirs, their_images, enrolled = {}, set(), False
        if cand is not None:
            try:
                theirs = {(t.modality, t.position): t for t in store.get(partition, cand.subject_id).templates}
                their_images = {(i.modality, i.position) for i in store.subject_images(partition, cand.subject_id)}
                enrolled = True
            except TambuaError:
                pass
        scores = {(s.modality, s.position): s for s in (cand.samples if cand else ())}
        keys = sorted(set(probe) | set(scores) | (set(theirs) & set(probe)),
                      key=lambda k: (("face", "finger", "iris").index(k[0]) if k[0] in _VIEWS else 9, k[1]))
        panels = []
        for m, p in keys:
            s = scores.get((m, p))
            pairs = 0
            if m == "finger" and (m, p) in probe and (m, p) in theirs:
                from matcher.finger import mcc

                pairs = len(mcc.matched_pairs(probe[(m, p)].template.minutiae, theirs[(m, p)].template.minutiae))
            panels.append(_Panel(m, p, s.score if s else None, s.fmr if s else None, (m, p) in probe,
                                 (m, p) in theirs, (m, p) in probe_images, (m, p) in their_images, pairs))
        return cls(cand, enrolled, tuple(panels))

    @staticmethod
    def image(engine, partition: str, case: Case, who: str, modality: str, position: int, view: str, hit: int,
              iris_review) -> bytes:
        """One side's picture of one sample as PNG: ``who`` is ``probe`` or ``hit`` (the
        case's candidate number ``hit``, whose pairs with the probe a finger shows)."""
        if view not in _VIEWS.get(modality, ()) or who not in ("probe", "hit"):
            raise ValueError("no such view")
        key = (modality, position)
        store = engine.store
        held, held_images = engine.capture(partition, case)
        probe_t = {(t.modality, t.position): t.template for t in held}
        probe_i = {(i.modality, i.position): i.data for i in held_images}
        hit_t, hit_i = {}, {}
        if case.candidates:
            cand = case.candidates[min(max(hit, 1), len(case.candidates)) - 1]
            hit_t = {(t.modality, t.position): t.template for t in store.get(partition, cand.subject_id).templates}
            hit_i = {(i.modality, i.position): i.data for i in store.subject_images(partition, cand.subject_id)}
        template, data = (probe_t if who == "probe" else hit_t).get(key), (probe_i if who == "probe" else hit_i).get(key)
        if modality == "finger":
            size = (template.width, template.height) if template is not None else None
            if view == "minutiae":
                if template is None:
                    raise KeyError("no template")
                from matcher.finger import mcc

                pairs = (mcc.matched_pairs(probe_t[key].minutiae, hit_t[key].minutiae)
                         if key in probe_t and key in hit_t else [])
                return _minutiae(render.sample_png(data, "enhanced", size) if data else None, template, pairs,
                                 0 if who == "probe" else 1)
        elif modality == "iris" and view in ("segmented", "strip"):
            if data is None or iris_review is None:
                if view == "strip" and template is not None:  # no image kept: the code itself
                    return render.code_png(template.code, template.mask)
                raise KeyError("no image kept")
            r = iris_review(data)
            return render.strip_png(r.strip, r.mask) if view == "strip" else _circles(data, r)
        if data is None:
            raise KeyError("no image kept")
        return render.sample_png(data, view, size if modality == "finger" else None)


def _minutiae(base: bytes | None, template, pairs: list[tuple[int, int, float]], side: int) -> bytes:
    """Minutiae drawn on the enhanced image (or a blank frame when none is kept): the pairs
    MCC matched in colour, numbered the same on both sides; the others in grey."""
    import cv2
    import numpy as np

    empty = np.zeros((0, 5))
    marks = render.minutiae_marks(*((template.minutiae, empty) if side == 0 else (empty, template.minutiae)),
                                  pairs)[side]
    if base is not None:
        img = cv2.cvtColor(cv2.imdecode(np.frombuffer(base, np.uint8), cv2.IMREAD_GRAYSCALE), cv2.COLOR_GRAY2BGR)
    else:
        img = np.full((template.height, template.width, 3), 255, np.uint8)
    for m in sorted(marks, key=lambda m: m.pair > 0):  # pairs on top
        colour = (0, 160, 0) if m.pair else (150, 150, 150)
        centre = (round(m.x), round(m.y))
        tip = m.tip()
        cv2.circle(img, centre, 5, colour, 2 if m.pair else 1, cv2.LINE_AA)
        cv2.line(img, centre, (round(tip[0]), round(tip[1])), colour, 2 if m.pair else 1, cv2.LINE_AA)
        if m.pair:
            cv2.putText(img, str(m.pair), (centre[0] + 6, centre[1] - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.45,
                        (0, 0, 220), 1, cv2.LINE_AA)
    return render.png(img[:, :, ::-1])


def _circles(data: bytes, r) -> bytes:
    """The eye with the pupil and limbus circles segmentation found."""
    import cv2

    from enroll.image import decode_image

    rgb = decode_image(data).rgb.copy()
    for (x, y, radius), colour in ((r.pupil, (255, 200, 0)), (r.iris, (0, 220, 0))):
        cv2.circle(rgb, (round(x), round(y)), round(radius), colour, 2, cv2.LINE_AA)
    return render.png(rgb)


def create_app(engine, access, audit, iris_review=None, site: str = "", secure: bool = True) -> Starlette:
    """The adjudication app over ``engine`` (its store and decisions), ``access`` (the
    principals; None: insecure development mode, no log-in) and ``audit`` (the chain)."""
    web = _Web(engine, access, audit, iris_review, site, secure)
    return Starlette(routes=[
        Route("/", web.queue),
        Route("/login", web.login, methods=["GET", "POST"]),
        Route("/logout", web.logout, methods=["POST"]),
        Route("/cases/{case_id}", web.case),
        Route("/cases/{case_id}/decide", web.decide, methods=["POST"]),
        Route("/cases/{case_id}/image", web.image),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ], middleware=[Middleware(_Headers)])


class WebServer:
    """The app served by uvicorn on a thread of the service's process (HTTPS with the
    service's certificate unless insecure)."""

    def __init__(self, app: Starlette, host: str, port: int, certfile: Path | None = None,
                 keyfile: Path | None = None) -> None:
        import uvicorn

        self.sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.port = self.sock.getsockname()[1]
        self.scheme = "https" if certfile else "http"
        self.server = uvicorn.Server(uvicorn.Config(
            app, ssl_certfile=str(certfile) if certfile else None, ssl_keyfile=str(keyfile) if keyfile else None,
            log_level="warning", access_log=False, lifespan="off"))
        self.thread = threading.Thread(target=self._run, name="web", daemon=True)

    def _run(self) -> None:
        asyncio.run(self.server.serve(sockets=[self.sock]))

    def start(self) -> None:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started and self.thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
