'use strict';
// The renderer viewer: builds every element from the JSON data block with textContent and
// attributes (never from markup), so any text in the data stays text.
// Views: X, Y and an optional page axis from every dimension; every other dimension is a
// filter, and its selected values share a cell. The view lives in the URL fragment.
// A comparison (DATA.mode 'diff') shows each pair side by side, overlaid, flickering or as a wipe,
// with its band (fail, review, pass, only in A/B, not rendered) as a badge and a filter; review decisions are
// kept in the browser and exported as a file for `renderer baseline approve`.
(function () {
  const DATA = JSON.parse(document.getElementById('renderer-data').textContent);
  const DIFF = DATA.mode === 'diff';
  const dims = DATA.dims;
  // A comparison inlines its items; a run's report keeps them in data/*.js chunks that hand
  // themselves to window.rendererData when a <script> tag loads them (file:// allows scripts
  // where it blocks fetch()).
  const CHUNKED = !DATA.items;
  const items = DATA.items || [];
  const loaded = new Map();   // 'i:3' (grid), 'd:3' (details), 'l-0:2' (labels) -> data
  const pending = new Map();  // the same keys -> {promise, resolve}
  window.rendererData = (kind, k, data) => {
    const key = kind + ':' + k;
    loaded.set(key, data);
    const p = pending.get(key);
    if (p) p.resolve(data);
  };
  function load(kind, k) {
    const key = kind + ':' + k;
    if (loaded.has(key)) return Promise.resolve(loaded.get(key));
    if (!pending.has(key)) {
      let resolve, reject;
      const promise = new Promise((a, b) => { resolve = a; reject = b; });
      pending.set(key, {promise, resolve});
      const s = document.createElement('script');
      s.src = 'data/' + kind + '-' + String(k).padStart(5, '0') + '.js';
      s.onerror = () => reject(new Error('cannot load ' + s.src + ' (is the report folder complete?)'));
      document.head.append(s);
    }
    return pending.get(key).promise;
  }
  // A dimension's value count; the labels of a large one are loaded in chunks as shown.
  const count = (d) => (dims[d].values ? dims[d].values.length : dims[d].count);
  const byName = new Map(dims.map((d, i) => [d.name, i]));
  const linked = new Map();
  for (const [a, b] of DATA.linked || []) { linked.set(a, b); linked.set(b, a); }
  const NOT_SET = '(not set)';
  const MIN = 40, MAX = 640;

  const MODES = [['trio', 'A | B | difference'], ['overlay', 'overlay'], ['flicker', 'flicker'], ['wipe', 'wipe']];
  const state = {x: -1, y: -1, page: -1, sel: dims.map(() => null), size: 160, mode: 'trio', fade: 0.5, wipe: 0.5};
  // Review decisions: pair id -> 'accept' | 'reject', kept per compared run in localStorage.
  const STORE = 'renderer-decisions:' + (DATA.baseline || DATA.run_a || '') + '>' + (DATA.run_b || '');
  const decisions = new Map();
  if (DIFF) {
    try { for (const [k, v] of Object.entries(JSON.parse(localStorage.getItem(STORE) || '{}'))) decisions.set(k, v); } catch (e) { /* storage off: decisions last the visit */ }
  }
  const saveDecisions = () => { try { localStorage.setItem(STORE, JSON.stringify(Object.fromEntries(decisions))); } catch (e) { /* storage off */ } };
  let grids = [];      // per page: {rows: [[cell element]]}
  let flat = [];       // every visible item in page order: {item, g, r, c}
  let cursor = null;   // {g, r, c}
  let open = -1;       // index in `flat` shown in the detail view, or -1

  const el = (tag, cls, text) => {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  };
  const label = (d, i) => {
    if (i < 0) return NOT_SET;
    if (dims[d].values) return dims[d].values[i];
    const c = loaded.get('l-' + d + ':' + Math.floor(i / DATA.chunks.labels));
    return c ? c[i % DATA.chunks.labels] : '…';
  };
  // A label's value index (-2: none), reading every label chunk of a large dimension first.
  async function indexOfLabel(d, value) {
    if (value === NOT_SET) return -1;
    if (dims[d].values) return dims[d].values.indexOf(value) < 0 ? -2 : dims[d].values.indexOf(value);
    const n = Math.ceil(dims[d].count / DATA.chunks.labels);
    const parts = await Promise.all(Array.from({length: n}, (_, k) => load('l-' + d, k)));
    for (let k = 0; k < n; k++) { const i = parts[k].indexOf(value); if (i >= 0) return k * DATA.chunks.labels + i; }
    return -2;
  }
  // A path relative to the page, each segment percent-encoded: `#` or `?` in a name is a name.
  const href = (p) => p.split('/').map((s) => (s === '..' || s === '.' ? s : encodeURIComponent(s))).join('/');

  // ------------------------------------------------------------ the view in the URL fragment

  async function readHash() {
    const q = new URLSearchParams(location.hash.slice(1));
    const dim = (name, fallback) => (q.has(name) ? (q.get(name) === '' ? -1 : (byName.has(q.get(name)) ? byName.get(q.get(name)) : fallback)) : fallback);
    const v = DATA.view;
    state.x = dim('x', byName.has(v.x) ? byName.get(v.x) : -1);
    state.y = dim('y', byName.has(v.y) ? byName.get(v.y) : -1);
    state.page = dim('page', byName.has(v.page) ? byName.get(v.page) : -1);
    state.sel = dims.map(() => null);
    for (const [key, value] of q) {
      if (!key.startsWith('only.')) continue;
      const d = byName.get(key.slice(5));
      if (d === undefined) continue;
      const i = await indexOfLabel(d, value);
      if (i < -1) continue;
      (state.sel[d] = state.sel[d] || new Set()).add(i);
    }
    const size = parseInt(q.get('size'), 10);
    state.size = Number.isFinite(size) ? Math.min(MAX, Math.max(MIN, size)) : 160;
    const mode = q.get('mode') || (q.get('overlay') === '1' ? 'overlay' : 'trio');
    state.mode = MODES.some(([m]) => m === mode) ? mode : 'trio';
    const fade = parseFloat(q.get('fade'));
    state.fade = Number.isFinite(fade) ? Math.min(1, Math.max(0, fade)) : 0.5;
    const wipe = parseFloat(q.get('wipe'));
    state.wipe = Number.isFinite(wipe) ? Math.min(1, Math.max(0, wipe)) : 0.5;
  }

  function writeHash() {
    const q = new URLSearchParams();
    const name = (d) => (d < 0 ? '' : dims[d].name);
    q.set('x', name(state.x)); q.set('y', name(state.y)); q.set('page', name(state.page));
    state.sel.forEach((s, d) => { if (s) for (const i of s) q.append('only.' + dims[d].name, label(d, i)); });
    q.set('size', String(state.size));
    if (DIFF) { q.set('mode', state.mode); q.set('fade', String(state.fade)); q.set('wipe', String(state.wipe)); }
    const hash = '#' + q.toString();
    if (location.hash !== hash) history.replaceState(null, '', hash);
  }

  // ------------------------------------------------------------ controls

  function axisSelect(text, key) {
    const wrap = el('label', null, text);
    const s = el('select');
    s.name = key;
    s.append(new Option('(none)', ''));
    dims.forEach((d) => s.append(new Option(d.name + ' (' + count(dims.indexOf(d)).toLocaleString() + (d.missing ? ' + ' + NOT_SET : '') + ')', d.name)));
    s.value = state[key] < 0 ? '' : dims[state[key]].name;
    s.addEventListener('change', () => {
      const d = s.value === '' ? -1 : byName.get(s.value);
      // One dimension per axis: taking it from another axis leaves that one empty.
      for (const k of ['x', 'y', 'page']) if (k !== key && state[k] === d && d >= 0) state[k] = -1;
      state[key] = d;
      update();
    });
    wrap.append(s);
    return wrap;
  }

  function buildControls() {
    const bar = document.getElementById('controls');
    bar.replaceChildren();
    bar.append(axisSelect('X', 'x'), axisSelect('Y', 'y'), axisSelect('page', 'page'));
    const swap = el('button', null, 'swap X/Y');
    swap.type = 'button';
    swap.addEventListener('click', () => { [state.x, state.y] = [state.y, state.x]; update(); });
    const sizeLabel = el('label', null, 'cell size');
    const slider = el('input');
    Object.assign(slider, {type: 'range', min: MIN, max: MAX, step: 8, value: state.size, name: 'size'});
    const shown = el('output', null, state.size + ' px');
    slider.addEventListener('input', () => { state.size = +slider.value; shown.textContent = state.size + ' px'; applySize(); writeHash(); });
    sizeLabel.append(slider, shown);
    const fit = el('button', null, 'fit to screen');
    fit.type = 'button';
    fit.name = 'fit';
    fit.addEventListener('click', fitToScreen);
    bar.append(swap, sizeLabel, fit);
    if (DIFF) {
      const ml = el('label', null, 'show');
      const mode = el('select');
      mode.name = 'mode';
      for (const [m, text] of MODES) mode.append(new Option(text, m));
      mode.value = state.mode;
      mode.addEventListener('change', () => { state.mode = mode.value; update(); });
      ml.append(mode);
      const fl = el('label', null, 'B opacity');
      const fade = el('input');
      Object.assign(fade, {type: 'range', min: 0, max: 1, step: 0.05, value: state.fade, name: 'fade'});
      fade.addEventListener('input', () => { state.fade = +fade.value; applySize(); writeHash(); });
      fl.append(fade);
      const wl = el('label', null, 'wipe');
      const wipe = el('input');
      Object.assign(wipe, {type: 'range', min: 0, max: 1, step: 0.01, value: state.wipe, name: 'wipe'});
      wipe.addEventListener('input', () => { state.wipe = +wipe.value; applySize(); writeHash(); });
      wl.append(wipe);
      fl.hidden = state.mode !== 'overlay';
      wl.hidden = state.mode !== 'wipe';
      bar.append(ml, fl, wl, bandChips(), exportButton());
    }
    const help = el('span', 'axisname', 'arrows move · Enter opens · Esc closes');
    bar.append(help);
  }

  // The band filter as one-click chips (the same selection as the band dimension's filter).
  function bandChips() {
    const box = el('span', 'bands');
    const d = byName.get('band');
    if (d === undefined) return box;
    dims[d].values.forEach((name, i) => {
      const n = items.filter((it) => it.v[d] === i).length;
      const chip = el('button', 'chip ' + bandClass(name), name + ' ' + n);
      chip.type = 'button';
      chip.dataset.band = name;
      chip.setAttribute('aria-pressed', String(!state.sel[d] || state.sel[d].has(i)));
      chip.addEventListener('click', () => {
        const all = dims[d].values.map((_, k) => k);
        const s = state.sel[d] || new Set(all);
        if (s.has(i)) s.delete(i); else s.add(i);
        state.sel[d] = s.size === all.length ? null : s;
        buildFilters();
        update();
      });
      box.append(chip);
    });
    return box;
  }

  const bandClass = (band) => 'band-' + band.replace(/ /g, '-');

  function exportButton() {
    const b = el('button', null, 'export decisions (' + decisions.size + ')');
    b.type = 'button';
    b.name = 'export';
    b.title = 'save the accept/reject decisions as a file for `renderer baseline approve --decisions FILE`';
    b.addEventListener('click', () => {
      const accept = [], reject = [];
      for (const [id, d] of decisions) (d === 'accept' ? accept : reject).push(id);
      const body = JSON.stringify({format: 'renderer-decisions/1', baseline: DATA.baseline || null,
        run_a: DATA.run_a, run_b: DATA.run_b, accept: accept.sort(), reject: reject.sort(), exported: new Date().toISOString()}, null, 1);
      const a = el('a');
      a.href = 'data:application/json;charset=utf-8,' + encodeURIComponent(body);
      a.download = 'decisions.json';
      document.body.append(a);
      a.click();
      a.remove();
    });
    return b;
  }

  function decide(it, d) {
    if (decisions.get(it.id) === d) decisions.delete(it.id); else decisions.set(it.id, d);
    saveDecisions();
    const b = document.querySelector('#controls button[name=export]');
    if (b) b.textContent = 'export decisions (' + decisions.size + ')';
  }

  function buildFilters() {
    const box = document.getElementById('filters');
    box.replaceChildren();
    dims.forEach((d, di) => {
      const n = count(di) + (d.missing ? 1 : 0);
      if (n < 2) return;
      const det = el('details');
      det.dataset.dim = d.name;
      const sum = el('summary');
      const s = state.sel[di];
      sum.append(el('span', null, d.name + ' '), el('span', 'sel', s ? s.size + ' of ' + n : 'all ' + n.toLocaleString()));
      det.append(sum);
      // Values are listed only when opened: a 5,000-prompt run does not build 5,000 checkboxes up front.
      det.addEventListener('toggle', () => { if (det.open && det.children.length === 1) det.append(...filterValues(di)); }, {once: false});
      box.append(det);
    });
  }

  function filterValues(di) {
    const d = dims[di];
    if (!d.values) return largeFilter(di);
    const list = el('div', 'values');
    const indexes = d.values.map((_, i) => i);
    if (d.missing) indexes.push(-1);
    for (const i of indexes) {
      const l = el('label');
      const c = el('input');
      c.type = 'checkbox';
      c.value = label(di, i);
      c.checked = !state.sel[di] || state.sel[di].has(i);
      c.addEventListener('change', () => {
        const s = state.sel[di] || new Set(indexes);
        if (c.checked) s.add(i); else s.delete(i);
        state.sel[di] = s.size === indexes.length ? null : s;
        update(true);
      });
      l.append(c, el('span', null, label(di, i)));
      list.append(l);
    }
    const bulk = el('div', 'bulk');
    const all = el('button', null, 'all');
    all.type = 'button';
    all.addEventListener('click', () => { state.sel[di] = null; list.querySelectorAll('input').forEach((c) => { c.checked = true; }); update(true); });
    bulk.append(all);
    return [list, bulk];
  }

  // Too many values to tick: type them (exact values, one per line); empty shows all.
  function largeFilter(di) {
    const box = el('div', 'values');
    const text = el('textarea');
    text.name = 'only';
    text.rows = 3;
    text.placeholder = 'one ' + dims[di].name + ' a line (exact value)';
    text.value = state.sel[di] ? [...state.sel[di]].map((i) => label(di, i)).join('\n') : '';
    const go = el('button', null, 'show only these');
    go.type = 'button';
    const note = el('span', 'axisname');
    go.addEventListener('click', async () => {
      const wanted = text.value.split('\n').map((v) => v.trim()).filter(Boolean);
      const found = new Set();
      for (const v of wanted) { const i = await indexOfLabel(di, v); if (i >= -1) found.add(i); }
      note.textContent = wanted.length && found.size < wanted.length ? ' ' + (wanted.length - found.size) + ' not in this run' : '';
      state.sel[di] = found.size ? found : null;
      update(true);
    });
    box.append(text, go, note);
    return [box];
  }

  function refreshFilterSummaries() {
    document.querySelectorAll('#filters details').forEach((det) => {
      const di = byName.get(det.dataset.dim);
      const d = dims[di], n = count(di) + (d.missing ? 1 : 0), s = state.sel[di];
      det.querySelector('.sel').textContent = s ? s.size + ' of ' + n : 'all ' + n.toLocaleString();
    });
  }

  // ------------------------------------------------------------ the grids

  function applySize() {
    document.documentElement.style.setProperty('--size', state.size + 'px');
    document.documentElement.style.setProperty('--fade', String(state.fade));
    document.documentElement.style.setProperty('--wipe', String(state.wipe));
  }

  function presentValues(d, visible) {
    if (d < 0) return [null];
    const seen = new Set();
    for (const it of visible) seen.add(it.v[d]);
    const out = [];
    for (let i = 0; i < count(d); i++) if (seen.has(i)) out.push(i);
    if (seen.has(-1)) out.push(-1);
    return out;
  }

  // Every value of a dimension, in order, "not set" last: what a run's unfiltered view shows
  // (each value is some job's, so nothing needs scanning).
  function allValues(d) {
    if (d < 0) return [null];
    const out = Array.from({length: count(d)}, (_, i) => i);
    if (dims[d].missing) out.push(-1);
    return out;
  }

  const keyOf = (p, r, c) => p + '|' + r + '|' + c;

  // One section per page value: the table of rows × cols, each cell the items of its bucket.
  // `g0` numbers the sections already in the page (a window appends to them).
  function drawPages(frag, blocks, cols, buckets, inner) {
    const {x, y, page} = state;
    for (const {pv, rows, cont} of blocks) {
      let grid, body;
      if (cont && grids.length) {
        grid = grids[grids.length - 1];
        body = grid.body;
      } else {
        const sec = el('section', 'page');
        if (page >= 0) {
          const h = el('h2');
          h.append(el('span', 'axisname', dims[page].name + ' = '), el('span', null, label(page, pv)));
          sec.append(h);
        }
        const table = el('table', 'grid');
        const head = table.createTHead().insertRow();
        head.append(el('th', 'corner', (y < 0 ? '' : dims[y].name + ' ↓') + (x < 0 ? '' : '  ' + dims[x].name + ' →')));
        for (const cv of cols(pv)) head.append(el('th', 'col', x < 0 ? '' : label(x, cv)));
        body = table.createTBody();
        grid = {rows: [], body};
        grids.push(grid);
        sec.append(table);
        frag.append(sec);
      }
      const g = grids.length - 1;
      const cs = cols(pv);
      let most = 1;
      for (const rv of rows) for (const cv of cs) most = Math.max(most, (buckets.get(keyOf(pv, rv, cv)) || []).length);
      const across = Math.max(1, Math.ceil(Math.sqrt(most)));
      for (const rv of rows) {
        const r = grid.rows.length;
        const tr = body.insertRow();
        tr.append(el('th', 'row', y < 0 ? '' : label(y, rv)));
        const line = [];
        cs.forEach((cv, c) => {
          const td = tr.insertCell();
          const list = buckets.get(keyOf(pv, rv, cv)) || [];
          const cell = el('div', list.length ? 'cell' : 'cell na', list.length ? undefined : 'n/a');
          cell.tabIndex = -1;
          cell.dataset.g = g; cell.dataset.r = r; cell.dataset.c = c;
          if (list.length) cell.style.gridTemplateColumns = 'repeat(' + Math.min(across, list.length) + ', auto)';
          else cell.title = 'this combination is not part of the run';
          for (const it of list) {
            const n = flat.length;
            flat.push({item: it, g, r, c});
            const node = DIFF ? diffItem(it) : runItem(it);
            if (inner.length) {
              const capEl = el('div', 'cap', inner.map((d) => label(d, it.v[d])).join(' · '));
              capEl.title = inner.map((d) => dims[d].name + ' = ' + label(d, it.v[d])).join('\n');
              node.append(capEl);
            }
            node.addEventListener('click', () => { setCursor({g, r, c}, false); showDetail(n); });
            cell.append(node);
          }
          td.append(cell);
          line.push(cell);
        });
        grid.rows.push(line);
      }
    }
  }

  function innerDims(present) {
    const {x, y, page} = state;
    const onAxis = new Set([x, y, page].filter((d) => d >= 0).map((d) => dims[d].name));
    // Dimensions that still vary inside a cell are named in each item's caption; a dimension
    // linked to one on an axis (seed with sample) is implied by it.
    return dims.map((_, i) => i).filter((i) => i !== x && i !== y && i !== page &&
      !(linked.has(dims[i].name) && onAxis.has(linked.get(dims[i].name))) && present(i) > 1);
  }

  function finish(frag, empty) {
    const main = document.getElementById('grids');
    if (empty) frag.append(el('p', 'empty', 'No images match these filters.'));
    main.replaceChildren(frag);
    cursor = null;
    if (grids.length && grids[0].rows.length) setCursor({g: 0, r: 0, c: 0}, false, false);
  }

  function render() {
    if (CHUNKED) return renderChunked();
    const visible = items.filter((it) => state.sel.every((s, d) => !s || s.has(it.v[d])));
    const {x, y, page} = state;
    const inner = innerDims((i) => presentValues(i, visible).length);
    const allCols = presentValues(x, visible), allRows = presentValues(y, visible), pages = presentValues(page, visible);
    const buckets = new Map();
    for (const it of visible) {
      const k = keyOf(page < 0 ? null : it.v[page], y < 0 ? null : it.v[y], x < 0 ? null : it.v[x]);
      let b = buckets.get(k);
      if (!b) buckets.set(k, b = []);
      b.push(it);
    }
    if (DIFF) for (const b of buckets.values()) b.sort((a, c) => a.rank - c.rank);
    grids = []; flat = [];
    const frag = document.createDocumentFragment();
    // A comparison's pages (verdicts) each show only their own rows and columns: the changed
    // page is not padded with every unchanged model. A run's pages keep one layout throughout.
    const perPage = new Map();
    if (DIFF && page >= 0) for (const it of visible) { const k = it.v[page]; if (!perPage.has(k)) perPage.set(k, []); perPage.get(k).push(it); }
    const rowsOf = (pv) => (perPage.get(pv) ? presentValues(y, perPage.get(pv)) : allRows);
    drawPages(frag, pages.map((pv) => ({pv, rows: rowsOf(pv)})), (pv) => (perPage.get(pv) ? presentValues(x, perPage.get(pv)) : allCols), buckets, inner);
    finish(frag, !visible.length);
    return Promise.resolve();
  }

  // ------------------------------------------------------------ a run's report: data in chunks
  // The grid shows a window of rows (of every page in turn) and grows as it is scrolled: a
  // million-image run never puts a million items in the document. Chunks are loaded when
  // their value ranges (DATA.chunks.zones) can hold what the window shows.

  const CH = DATA.chunks || {size: 1, labels: 1, total: 0, zones: []};
  const BUDGET = CH.budget || 2400;   // cells drawn per window step
  const MAXCOLS = 300;   // columns shown at most (a dimension with more values belongs on Y)
  let layout = null;     // {pages, rows, cols, inner, step, next}
  let renderToken = 0;

  const meets = (zone, d, values) => {
    const [lo, hi, miss] = zone[d];
    for (const v of values) if (v < 0 ? miss : lo <= v && v <= hi) return true;
    return false;
  };

  async function loadAll(kind) {
    const n = Math.ceil(CH.total / CH.size);
    await Promise.all(Array.from({length: n}, (_, k) => load(kind, k)));
  }

  // Each selected job, as the grid needs it (details come from the d- chunks when opened).
  function jobOf(k, j) {
    const c = loaded.get('i:' + k);
    const n = k * CH.size + j;
    const code = c.s[j];
    const stateName = {p: 'planned', s: 'submitted', c: 'completed', d: 'downloaded', f: 'failed'}[code] || 'planned';
    const t = c.t[j];
    const src = t ? 'thumbs/' + t.slice(0, 2) + '/' + t + '.jpg' : (c.p[j] || null);
    return {n, v: dims.map((_, d) => c.v[d][j]), state: stateName, error: c.e[j] || null,
      images: src ? [{thumb: src}] : [], prompt_id: '', model: ''};
  }

  function passes(c, j) {
    for (let d = 0; d < dims.length; d++) { const s = state.sel[d]; if (s && !s.has(c.v[d][j])) return false; }
    return true;
  }

  async function plan() {
    const {x, y, page} = state;
    const filtered = state.sel.some((s) => s);
    let pages, rows, cols, present;
    if (filtered) {
      // Which values remain needs every job: the whole grid index is read (once).
      setBusy('reading ' + CH.total.toLocaleString() + ' jobs…');
      await loadAll('i');
      const seen = dims.map(() => new Set());
      const n = Math.ceil(CH.total / CH.size);
      for (let k = 0; k < n; k++) {
        const c = loaded.get('i:' + k);
        for (let j = 0; j < c.s.length; j++) if (passes(c, j)) for (let d = 0; d < dims.length; d++) seen[d].add(c.v[d][j]);
      }
      const of = (d) => (d < 0 ? [null] : allValues(d).filter((v) => seen[d].has(v)));
      pages = of(page); rows = of(y); cols = of(x);
      present = (i) => seen[i].size;
    } else {
      pages = allValues(page); rows = allValues(y); cols = allValues(x);
      present = (i) => count(i) + (dims[i].missing ? 1 : 0);
    }
    cols = cols.slice(0, MAXCOLS);
    const step = Math.max(1, Math.floor(BUDGET / Math.max(1, cols.length)));
    return {pages, rows, cols, inner: innerDims(present), step, next: 0, total: pages.length * rows.length, empty: filtered && !rows.length};
  }

  // The rows [from, to) of the page-by-page sequence, with the items they hold.
  async function windowOf(from, to) {
    const {x, y, page} = state;
    const blocks = [];
    for (let i = from; i < to && i < layout.total;) {
      const p = Math.floor(i / layout.rows.length), r0 = i % layout.rows.length;
      const r1 = Math.min(layout.rows.length, r0 + (to - i));
      blocks.push({pv: layout.pages[p], rows: layout.rows.slice(r0, r1), cont: r0 > 0 && i === from && from > 0});
      i += r1 - r0;
    }
    const need = [];
    CH.zones.forEach((zone, k) => {
      if (!state.sel.every((s, d) => !s || meets(zone, d, s))) return;
      if (blocks.some((b) => (page < 0 || meets(zone, page, [b.pv])) && (y < 0 || meets(zone, y, b.rows)))) need.push(k);
    });
    await Promise.all(need.map((k) => load('i', k)));
    const wanted = new Map(blocks.map((b) => [b.pv, new Set(b.rows)]));
    const colSet = new Set(layout.cols);
    const buckets = new Map();
    for (const k of need) {
      const c = loaded.get('i:' + k);
      for (let j = 0; j < c.s.length; j++) {
        const pv = page < 0 ? null : c.v[page][j], rv = y < 0 ? null : c.v[y][j], cv = x < 0 ? null : c.v[x][j];
        const rowsHere = wanted.get(pv);
        if (!rowsHere || !rowsHere.has(rv) || !colSet.has(cv) || !passes(c, j)) continue;
        const key = keyOf(pv, rv, cv);
        let b = buckets.get(key);
        if (!b) buckets.set(key, b = []);
        b.push(jobOf(k, j));
      }
    }
    // Labels of large dimensions, for what is on screen only.
    const want = new Map();
    const add = (d, v) => { if (d >= 0 && v !== null && v >= 0 && !dims[d].values) { if (!want.has(d)) want.set(d, new Set()); want.get(d).add(Math.floor(v / CH.labels)); } };
    for (const b of blocks) { add(page, b.pv); for (const rv of b.rows) add(y, rv); }
    for (const cv of layout.cols) add(x, cv);
    const named = [byName.get('prompt'), byName.get('model')].filter((d) => d !== undefined);
    for (const list of buckets.values()) for (const it of list) for (const d of [...layout.inner, ...named]) add(d, it.v[d]);
    await Promise.all([...want].flatMap(([d, ks]) => [...ks].map((k) => load('l-' + d, k))));
    return {blocks, buckets};
  }

  function moreButton() {
    const left = layout.total - layout.next;
    const b = el('button', 'more', 'more rows (' + left.toLocaleString() + ' left)');
    b.type = 'button';
    b.name = 'more';
    b.addEventListener('click', () => grow());
    return b;
  }

  let growing = null;
  function grow() {
    if (growing || !layout || layout.next >= layout.total) return growing;
    const token = renderToken;
    growing = windowOf(layout.next, layout.next + layout.step).then(({blocks, buckets}) => {
      if (token !== renderToken) return;
      layout.next = Math.min(layout.total, layout.next + layout.step);
      const main = document.getElementById('grids');
      const frag = document.createDocumentFragment();
      drawPages(frag, blocks, () => layout.cols, buckets, layout.inner);
      const old = main.querySelector('.more-box');
      if (old) old.remove();
      main.append(frag);
      if (layout.next < layout.total) main.append(moreBox());
      status();
    }).finally(() => { growing = null; });
    return growing;
  }

  const sentinel = new IntersectionObserver((entries) => { if (entries.some((e) => e.isIntersecting)) grow(); }, {rootMargin: '800px'});

  function moreBox() {
    const box = el('div', 'more-box');
    box.append(moreButton());
    sentinel.disconnect();
    sentinel.observe(box);
    return box;
  }

  function status() {
    const shown = Math.min(layout.next, layout.total);
    const perPage = layout.rows.length || 1;
    setBusy(layout.total > shown ? 'showing ' + shown.toLocaleString() + ' of ' + layout.total.toLocaleString() + ' rows' + (layout.pages.length > 1 ? ' (' + perPage.toLocaleString() + ' a page)' : '') : '');
  }

  function setBusy(text) {
    const s = document.getElementById('summary');
    s.textContent = (DATA.summary || '') + (text ? ' · ' + text : '');
  }

  async function renderChunked() {
    const token = ++renderToken;
    const next = await plan();
    if (token !== renderToken) return;
    layout = next;
    const first = await windowOf(0, layout.step);
    if (token !== renderToken) return;
    layout.next = Math.min(layout.total, layout.step);
    grids = []; flat = [];
    const frag = document.createDocumentFragment();
    drawPages(frag, first.blocks, () => layout.cols, first.buckets, layout.inner);
    if (layout.next < layout.total) frag.append(moreBox());
    finish(frag, layout.empty || !layout.total);
    status();
  }

  function thumb(src, alt, cls) {
    const img = el('img', cls);
    img.loading = 'lazy';
    img.decoding = 'async';
    img.alt = alt;
    img.src = href(src);
    return img;
  }

  function runItem(it) {
    const node = el('div', 'item ' + it.state);
    const box = el('div', 'box');
    const named = (name) => (byName.has(name) ? label(byName.get(name), it.v[byName.get(name)]) : '');
    const alt = CHUNKED ? named('prompt') + ' / ' + named('model') : it.prompt_id + ' / ' + it.model;
    if (it.state === 'downloaded' && it.images.length) {
      box.append(thumb(it.images[0].thumb || it.images[0].path, alt));
      if (it.images.length > 1) box.append(el('span', 'count', it.images.length));
    } else if (it.state === 'failed') {
      box.textContent = 'failed: ' + (it.error || 'no reason recorded');
    } else {
      box.textContent = 'not rendered yet (' + it.state + ')';
    }
    box.title = it.state === 'failed' ? 'failed: ' + (it.error || '') : (it.prompt || alt);
    node.append(box);
    return node;
  }

  function diffItem(it) {
    const stacked = state.mode !== 'trio';
    const node = el('div', 'item diff' + (stacked ? ' stacked ' + state.mode : ''));
    node.dataset.band = it.verdict;
    const badge = el('span', 'verdict ' + bandClass(it.verdict), it.verdict);
    if (stacked) {
      const stack = el('div', 'stack box');
      stack.append(badge);
      if (it.a) stack.append(thumb(it.a.thumb, 'A', 'a'));
      if (it.b) stack.append(thumb(it.b.thumb, 'B', 'b'));
      if (!it.a && !it.b) stack.append(el('span', null, 'no image'));
      if (state.mode === 'wipe' && it.a && it.b) stack.append(el('span', 'wipe-line'));
      if (state.mode === 'flicker' && it.a && it.b) stack.append(el('span', 'side flick-a', 'A'), el('span', 'side flick-b', 'B'));
      node.append(stack);
    } else {
      const trio = el('div', 'trio');
      for (const [side, src] of [['A', it.a && it.a.thumb], ['B', it.b && it.b.thumb], ['difference', it.diff_thumb]]) {
        const box = el('div', 'box');
        if (src) box.append(thumb(src, side));
        else box.append(el('span', null, side === 'difference' ? (it.verdict === 'identical' ? 'identical' : 'n/a') : 'missing in ' + side));
        box.append(el('span', 'side', side === 'difference' ? 'difference ×4' : side));
        trio.append(box);
      }
      trio.firstChild.append(badge);
      node.append(trio);
    }
    const d = decisions.get(it.id);
    if (d) { node.classList.add(d + 'ed'); node.append(el('span', 'decision ' + d, d === 'accept' ? 'accepted' : 'rejected')); }
    node.title = it.label + ' #' + it.index;
    return node;
  }

  function fitToScreen() {
    let widest = 1;
    for (const grid of grids) {
      let units = 0;
      for (const cell of grid.rows[0] || []) {
        let most = 1;
        for (const line of grid.rows) {
          const c = line[grid.rows[0].indexOf(cell)];
          const cols = c.style.gridTemplateColumns.match(/repeat\((\d+)/);
          most = Math.max(most, cols ? +cols[1] : 1);
        }
        units += most * (DIFF && state.mode === 'trio' ? 3 : 1);
      }
      widest = Math.max(widest, units);
    }
    const header = document.querySelector('table.grid th.row');
    const room = document.documentElement.clientWidth - 48 - (header ? header.getBoundingClientRect().width : 100);
    state.size = Math.max(MIN, Math.min(MAX, Math.floor(room / widest - 8)));
    document.querySelector('input[name=size]').value = state.size;
    document.querySelector('#controls output').textContent = state.size + ' px';
    applySize();
    writeHash();
  }

  // ------------------------------------------------------------ keyboard and detail

  function setCursor(to, focus = true, scroll = true) {
    if (cursor) { const old = cellAt(cursor); if (old) { old.classList.remove('cur'); old.tabIndex = -1; } }
    cursor = to;
    const now = cellAt(to);
    if (!now) return;
    now.classList.add('cur');
    now.tabIndex = 0;
    if (focus) now.focus({preventScroll: !scroll});
  }

  const cellAt = (p) => (grids[p.g] && grids[p.g].rows[p.r] ? grids[p.g].rows[p.r][p.c] : null);

  function move(dr, dc) {
    if (!grids.length) return;
    let {g, r, c} = cursor || {g: 0, r: 0, c: 0};
    c = Math.max(0, Math.min(grids[g].rows[r].length - 1, c + dc));
    r += dr;
    if (r < 0 && g > 0) { g -= 1; r = grids[g].rows.length - 1; }
    else if (r >= grids[g].rows.length && g < grids.length - 1) { g += 1; r = 0; }
    r = Math.max(0, Math.min(grids[g].rows.length - 1, r));
    c = Math.min(c, grids[g].rows[r].length - 1);
    setCursor({g, r, c});
  }

  function firstItemAt(p) { return flat.findIndex((f) => f.g === p.g && f.r === p.r && f.c === p.c); }

  function fmtTime(t) {
    if (typeof t !== 'number') return 'n/a';
    const d = new Date(t * 1000);
    return d.toLocaleString(undefined, {dateStyle: 'medium', timeStyle: 'medium'}) + ' (' + d.toISOString().replace('T', ' ').slice(0, 19) + ' UTC)';
  }
  const secs = (a, b) => (typeof a === 'number' && typeof b === 'number' ? (b - a).toFixed(1) + ' s' : 'n/a');

  function facts(list, rows) {
    for (const [k, v, cls] of rows) {
      if (v === undefined) continue;
      list.append(el('dt', null, k));
      const dd = el('dd', cls || null);
      if (v instanceof Node) dd.append(v); else dd.textContent = v === null ? 'n/a' : String(v);
      list.append(dd);
    }
  }

  function figure(src, caption) {
    const f = el('figure');
    const img = el('img');
    img.alt = caption;
    img.src = href(src);
    f.append(img, el('figcaption', null, caption));
    return f;
  }

  // A run's job in full: its grid entry with its details chunk (loaded first when it is not yet).
  function showDetail(n) {
    if (n < 0 || n >= flat.length) return;
    const base = flat[n].item;
    if (!CHUNKED) return showFull(n, base);
    const k = Math.floor(base.n / CH.size), more = loaded.get('d:' + k);
    if (more) return showFull(n, {...more[base.n % CH.size], v: base.v, images: imagesOf(base, more[base.n % CH.size])});
    open = n;
    load('d', k).then(() => { if (open === n) showDetail(n); }, (e) => console.error(e));
  }

  const imagesOf = (base, full) => full.images.map((im, i) => ({...im, thumb: i === 0 && base.images.length ? base.images[0].thumb : null}));

  function showFull(n, it) {
    open = n;
    const host = document.getElementById('detail');
    const box = el('div', 'box');
    const media = el('div', 'media');
    const side = el('div', 'facts');
    const nav = el('div', 'nav');
    const prev = el('button', null, '← previous'), next = el('button', null, 'next →'), close = el('button', null, 'close (Esc)');
    prev.addEventListener('click', () => showDetail(open - 1));
    next.addEventListener('click', () => showDetail(open + 1));
    close.addEventListener('click', closeDetail);
    nav.append(prev, next, close, el('span', 'where', (n + 1) + ' of ' + flat.length));
    if (DIFF && it.verdict !== 'only in A' && it.verdict !== 'not rendered') {  // B has no picture to accept
      for (const [d, text] of [['accept', 'accept into baseline'], ['reject', 'reject']]) {
        const b = el('button', 'decide' + (decisions.get(it.id) === d ? ' on' : ''), text);
        b.name = d;
        b.addEventListener('click', () => { decide(it, d); render(); showDetail(Math.min(open, flat.length - 1)); });
        nav.append(b);
      }
    }
    side.append(nav);
    const list = el('dl');
    list.id = 'detail-facts';
    const dimsRows = dims.map((d, i) => [d.name, label(i, it.v[i])]);
    if (DIFF) {
      for (const [name, part] of [['A', it.a], ['B', it.b]]) if (part) media.append(figure(part.full || part.thumb, name + ': ' + part.path));
      if (it.diff) media.append(figure(it.diff, 'difference ×4'));
      const shown = (v) => (v === null || v === undefined ? '(not set)' : JSON.stringify(v));
      const what = Object.entries(it.differs || {}).map(([k, [a, b]]) => k + ': ' + shown(a) + ' → ' + shown(b)).join('\n');
      facts(list, [['why', it.reason], ['decision', decisions.get(it.id) || 'none'],
        ['pair', it.label + ' #' + it.index], ['what differs', what || (it.verdict.startsWith('only') ? 'n/a' : 'inputs identical')], ...dimsRows,
        ['SSIM', it.ssim === null ? 'n/a' : it.ssim], ['pHash distance', it.phash === null ? 'n/a' : it.phash + ' of 64'],
        ['bands', DATA.bands], ['A', it.a ? it.a.path : 'missing'], ['B', it.b ? it.b.path : 'missing'], ['pair id', it.id], ['job key (A)', it.key]]);
    } else {
      it.images.forEach((im, i) => media.append(figure(im.path, it.images.length > 1 ? 'image ' + i + ' · ' + im.width + '×' + im.height : im.width + '×' + im.height)));
      if (!it.images.length) media.append(el('p', 'empty', it.state === 'failed' ? 'failed: ' + (it.error || 'no reason recorded') : 'not rendered yet (' + it.state + ')'));
      const input = el('pre', null, JSON.stringify(it.input, null, 2));
      const t = it.t || {};
      facts(list, [['prompt', it.prompt], ...dimsRows, ['state', it.state],
        ['failure', it.state === 'failed' ? (it.error || 'no reason recorded') + (it.error_kind ? ' [' + it.error_kind + ']' : '') : undefined, 'error'],
        ['note', it.state !== 'failed' && it.error ? it.error : undefined],
        ['endpoint', it.endpoint], ['seed', it.seed], ['request id', it.request_id], ['attempts', it.attempts],
        ['submitted', fmtTime(t.submitted)], ['completed', fmtTime(t.completed)], ['downloaded', fmtTime(t.downloaded)],
        ['queue + inference', secs(t.submitted, t.completed)], ['download', secs(t.completed, t.downloaded)],
        ['cost', typeof it.cost === 'number' ? '$' + it.cost.toFixed(4) + ' (by the manifest\'s prices)' : 'unpriced (the manifest gives no price for this model)'],
        ['files', it.images.map((im) => im.path.replace(/^\.\.\//, '')).join('\n') || 'none'],
        ['job key', it.key], ['exact input', input]]);
    }
    side.append(list);
    box.append(media, side);
    host.replaceChildren(box);
    host.hidden = false;
    const at = flat[n];
    setCursor({g: at.g, r: at.r, c: at.c}, false);
  }

  function closeDetail() {
    const host = document.getElementById('detail');
    host.hidden = true;
    host.replaceChildren();
    open = -1;
    if (cursor) setCursor(cursor);
  }

  document.getElementById('detail').addEventListener('click', (e) => { if (e.target.id === 'detail') closeDetail(); });

  document.addEventListener('keydown', (e) => {
    if (e.target instanceof HTMLInputElement || e.target instanceof HTMLSelectElement) return;
    if (open >= 0) {
      if (e.key === 'Escape') closeDetail();
      else if (e.key === 'ArrowRight') showDetail(open + 1);
      else if (e.key === 'ArrowLeft') showDetail(open - 1);
      else if (e.key === 'ArrowDown' || e.key === 'ArrowUp') {
        move(e.key === 'ArrowDown' ? 1 : -1, 0);
        const n = firstItemAt(cursor);
        if (n >= 0) showDetail(n);
      } else return;
      e.preventDefault();
      return;
    }
    const steps = {ArrowRight: [0, 1], ArrowLeft: [0, -1], ArrowDown: [1, 0], ArrowUp: [-1, 0]};
    if (steps[e.key]) { move(...steps[e.key]); e.preventDefault(); }
    else if ((e.key === 'Enter' || e.key === ' ') && cursor) {
      const n = firstItemAt(cursor);
      if (n >= 0) { showDetail(n); e.preventDefault(); }
    }
  });

  // ------------------------------------------------------------ start

  function update(keepFilters) {
    writeHash();
    applySize();
    if (!keepFilters) buildControls();
    refreshFilterSummaries();
    render();
  }

  window.addEventListener('hashchange', async () => { await readHash(); buildControls(); buildFilters(); applySize(); render(); });
  if (DIFF) items.forEach((it) => { it.rank = {fail: 0, review: 1, 'only in A': 2, 'only in B': 3, 'not rendered': 4, pass: 5}[it.verdict] ?? 6; });
  document.getElementById('summary').textContent = (DATA.summary || '') + (DIFF && DATA.bands ? ' · bands: ' + DATA.bands : '');
  (async () => {
    await readHash();
    buildControls();
    buildFilters();
    applySize();
    await render();
    writeHash();
    document.body.dataset.ready = '1';
    window.rendererFirstGrid = performance.now();
  })().catch((e) => { console.error(e); document.getElementById('grids').replaceChildren(el('p', 'empty', String(e.message || e))); });
})();
