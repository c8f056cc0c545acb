// Keel's web console: a hash-routed single page over the same /api routes the `keel`
// command line calls, with the caller's own token. Every node is built with
// createElement and every piece of data goes in through textContent or setAttribute:
// the page never parses data as markup.
'use strict';

(() => {
  const TOKEN_KEY = 'keel.console.token';
  const NS_KEY = 'keel.console.namespace';
  const session = window.sessionStorage;

  // ── DOM helpers ─────────────────────────────────────────────────────────

  function h(tag, props, ...kids) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === 'text') node.textContent = String(value);
      else if (key === 'class') node.className = value;
      else if (key.startsWith('on')) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? '' : String(value));
    }
    add(node, ...kids);
    return node;
  }

  function add(node, ...kids) {
    for (const kid of kids.flat(Infinity)) {
      if (kid === null || kid === undefined || kid === false) continue;
      node.appendChild(typeof kid === 'object' ? kid : document.createTextNode(String(kid)));
    }
    return node;
  }

  function clear(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
    return node;
  }

  // A link inside the console: `parts` are path segments, each percent-encoded.
  function link(text, parts, query) {
    return h('a', { href: route(parts, query) }, text);
  }

  function route(parts, query) {
    let hash = '#/' + parts.map((p) => encodeURIComponent(p)).join('/');
    const params = new URLSearchParams();
    for (const [k, v] of Object.entries(query || {})) if (v) params.set(k, v);
    const text = params.toString();
    return text ? hash + '?' + text : hash;
  }

  function seg(text) {
    return encodeURIComponent(text);
  }

  function statusBadge(status) {
    const s = String(status || 'unknown');
    return h('span', { class: 'badge status-' + s.replace(/[^a-z_]/gi, '') }, s);
  }

  function when(text) {
    if (!text) return h('span', { class: 'muted' }, '—');
    const t = Date.parse(text);
    if (Number.isNaN(t)) return h('span', {}, String(text));
    return h('time', { datetime: String(text), title: String(text) }, relative(t));
  }

  function relative(t) {
    const secs = Math.round((Date.now() - t) / 1000);
    const n = Math.abs(secs);
    const span = n < 60 ? n + 's' : n < 3600 ? Math.floor(n / 60) + 'm' : n < 86400 ? Math.floor(n / 3600) + 'h' : Math.floor(n / 86400) + 'd';
    return secs < 0 ? 'in ' + span : span + ' ago';
  }

  function duration(ms) {
    if (ms === null || ms === undefined || Number.isNaN(ms)) return '';
    if (ms < 1000) return ms + ' ms';
    if (ms < 60000) return (ms / 1000).toFixed(ms < 10000 ? 2 : 1) + ' s';
    if (ms < 3600000) return Math.floor(ms / 60000) + 'm ' + Math.round((ms % 60000) / 1000) + 's';
    return Math.floor(ms / 3600000) + 'h ' + Math.round((ms % 3600000) / 60000) + 'm';
  }

  function table(headers, rows, opts) {
    const o = opts || {};
    if (!rows.length) return h('p', { class: 'muted empty' }, o.empty || 'Nothing here.');
    return h('div', { class: 'table-wrap' },
      h('table', { class: o.class || 'grid' },
        h('thead', {}, h('tr', {}, headers.map((t) => h('th', { text: t })))),
        h('tbody', {}, rows.map((cells) => h('tr', {}, cells.map((c) => h('td', {}, c)))))));
  }

  function fields(pairs) {
    return h('dl', { class: 'fields' }, pairs
      .filter(([, v]) => v !== null && v !== undefined && v !== '')
      .map(([k, v]) => [h('dt', { text: k }), h('dd', {}, v)]));
  }

  function pre(value) {
    const text = typeof value === 'string' ? value : JSON.stringify(value, null, 2);
    return h('pre', { class: 'json' }, text === undefined ? 'null' : text);
  }

  function section(title, ...kids) {
    return h('section', { class: 'panel' }, h('h2', { text: title }), kids);
  }

  function notice(kind, text) {
    return h('div', { class: 'notice ' + kind, role: kind === 'error' ? 'alert' : 'status' }, text);
  }

  function errorBox(err) {
    if (err && err.status === 403) {
      return notice('error', 'Your token\'s role does not allow this (' + (err.reason || 'forbidden') + '): ' + (err.message || ''));
    }
    const what = err && err.status ? 'HTTP ' + err.status + ' ' + (err.reason || '') : (err && err.reason) || 'error';
    return notice('error', what + ': ' + ((err && err.message) || String(err)));
  }

  // Any JSON value for a person: scalars as text, arrays of objects as tables, objects as
  // field lists, nested deeper than that as JSON.
  function view(value, depth) {
    const d = depth || 0;
    if (value === null || value === undefined) return h('span', { class: 'muted' }, '—');
    if (typeof value !== 'object') return String(value);
    if (Array.isArray(value)) {
      if (!value.length) return h('span', { class: 'muted' }, 'none');
      if (d < 2 && value.every((v) => v && typeof v === 'object' && !Array.isArray(v))) {
        const keys = [];
        for (const v of value) for (const k of Object.keys(v)) if (!keys.includes(k) && keys.length < 10) keys.push(k);
        return table(keys, value.map((v) => keys.map((k) => cell(v[k]))));
      }
      if (value.every((v) => v === null || typeof v !== 'object')) return value.map(String).join(', ');
      return pre(value);
    }
    if (d >= 2) return pre(value);
    if (!Object.keys(value).length) return h('span', { class: 'muted' }, 'none');
    return fields(Object.entries(value).map(([k, v]) => [k, view(v, d + 1)]));
  }

  function cell(v) {
    if (v === null || v === undefined) return '';
    if (typeof v === 'object') return h('code', { class: 'inline-json' }, clip(JSON.stringify(v), 160));
    return String(v);
  }

  function clip(text, max) {
    const s = String(text);
    return s.length <= max ? s : s.slice(0, max - 1) + '…';
  }

  // ── payloads: the SDK's Avro Value codec ────────────────────────────────

  const MAGIC = [0xc3, 0x01];
  const FINGERPRINT = [0xe2, 0xa3, 0x3d, 0xff, 0x55, 0x80, 0x22, 0x37];

  function fromBase64(text) {
    const bin = atob(text);
    const out = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
    return out;
  }

  function toBase64(bytes) {
    let bin = '';
    for (const b of bytes) bin += String.fromCharCode(b);
    return btoa(bin);
  }

  function decodeBlob(blob) {
    const raw = fromBase64(blob);
    if (raw.length < 10 || raw[0] !== MAGIC[0] || raw[1] !== MAGIC[1]) throw new Error('not Avro single-object');
    for (let i = 0; i < 8; i++) if (raw[2 + i] !== FINGERPRINT[i]) throw new Error('unknown schema');
    let pos = 10;
    const byte = () => {
      if (pos >= raw.length) throw new Error('truncated');
      return raw[pos++];
    };
    const long = () => {
      let v = 0n;
      let shift = 0n;
      for (;;) {
        const b = byte();
        v |= BigInt(b & 0x7f) << shift;
        if (!(b & 0x80)) break;
        shift += 7n;
        if (shift > 63n) throw new Error('long overflow');
      }
      const n = (v >> 1n) ^ -(v & 1n);
      return Number.isSafeInteger(Number(n)) ? Number(n) : n.toString();
    };
    const take = (n) => {
      if (n < 0 || pos + n > raw.length) throw new Error('truncated');
      const out = raw.subarray(pos, pos + n);
      pos += n;
      return out;
    };
    const text = () => new TextDecoder('utf-8', { fatal: true }).decode(take(Number(long())));
    const blockCount = () => {
      let n = Number(long());
      if (n < 0) {
        long();
        n = -n;
      }
      return n;
    };
    const value = (depth) => {
      if (depth > 128) throw new Error('too deep');
      switch (Number(long())) {
        case 0: return null;
        case 1: return byte() === 1;
        case 2: return long();
        case 3: return new DataView(take(8).slice().buffer).getFloat64(0, true);
        case 4: return { $type: 'bytes', base64: toBase64(take(Number(long()))) };
        case 5: return text();
        case 6: {
          const items = [];
          for (let n = blockCount(); n; n = blockCount()) for (let i = 0; i < n; i++) items.push(value(depth + 1));
          return items;
        }
        case 7: {
          const map = {};
          for (let n = blockCount(); n; n = blockCount()) {
            for (let i = 0; i < n; i++) {
              const k = text();
              map[k] = value(depth + 1);
            }
          }
          return map;
        }
        default: throw new Error('unknown branch');
      }
    };
    const v = value(0);
    if (pos !== raw.length) throw new Error('trailing bytes');
    return v;
  }

  // A payload as the value it carries: an Avro or JSON envelope decoded, a bare Avro
  // blob string decoded, anything else as it is.
  function decodePayload(v) {
    try {
      if (v && typeof v === 'object' && !Array.isArray(v) && typeof v.blob === 'string') {
        if (v.codec === 'avro') return decodeBlob(v.blob);
        if (v.codec === 'json') return JSON.parse(v.blob);
      }
      if (typeof v === 'string' && v.length >= 16 && /^w[0-9A-Za-z+/]+=*$/.test(v)) return decodeBlob(v);
    } catch (e) {
      return v;
    }
    return v;
  }

  function encodeValue(out, v) {
    const long = (n) => {
      let z = (BigInt(n) << 1n) ^ (BigInt(n) >> 63n);
      z = BigInt.asUintN(64, z);
      for (;;) {
        if (z < 0x80n) {
          out.push(Number(z));
          return;
        }
        out.push(Number((z & 0x7fn) | 0x80n));
        z >>= 7n;
      }
    };
    const text = (s) => {
      const bytes = new TextEncoder().encode(s);
      long(bytes.length);
      for (const b of bytes) out.push(b);
    };
    if (v === null || v === undefined) long(0);
    else if (typeof v === 'boolean') {
      long(1);
      out.push(v ? 1 : 0);
    } else if (typeof v === 'number' && Number.isSafeInteger(v)) {
      long(2);
      long(v);
    } else if (typeof v === 'number') {
      long(3);
      const buf = new DataView(new ArrayBuffer(8));
      buf.setFloat64(0, v, true);
      for (let i = 0; i < 8; i++) out.push(buf.getUint8(i));
    } else if (typeof v === 'string') {
      long(5);
      text(v);
    } else if (Array.isArray(v)) {
      long(6);
      if (v.length) {
        long(v.length);
        for (const item of v) encodeValue(out, item);
      }
      long(0);
    } else {
      long(7);
      const entries = Object.entries(v);
      if (entries.length) {
        long(entries.length);
        for (const [k, item] of entries) {
          text(k);
          encodeValue(out, item);
        }
      }
      long(0);
    }
  }

  // The SDK's argument-list envelope, as `keel workflow signal --input` builds it: a
  // JSON array is the list, any other JSON one argument, other text one string.
  function argumentsEnvelope(text) {
    let list = [];
    const trimmed = (text || '').trim();
    if (trimmed) {
      try {
        const parsed = JSON.parse(trimmed);
        list = Array.isArray(parsed) ? parsed : [parsed];
      } catch (e) {
        list = [text];
      }
    }
    const out = [...MAGIC, ...FINGERPRINT];
    encodeValue(out, list);
    return { codec: 'avro', blob: toBase64(out) };
  }

  // ── the API ─────────────────────────────────────────────────────────────

  class ApiError extends Error {
    constructor(status, body) {
      super((body && body.message) || 'request failed');
      this.status = status;
      this.reason = body && body.reason;
      this.body = body;
    }
  }

  function namespace() {
    return session.getItem(NS_KEY) || 'default';
  }

  async function api(method, path, body) {
    for (let attempt = 0; ; attempt++) {
      const headers = {
        Accept: 'application/json',
        'X-Durable-Workflow-Control-Plane-Version': '2',
        'X-Namespace': namespace(),
      };
      const token = session.getItem(TOKEN_KEY);
      if (token) headers.Authorization = 'Bearer ' + token;
      if (body !== undefined) headers['Content-Type'] = 'application/json';
      let res;
      try {
        res = await fetch('/api' + path, {
          method,
          headers,
          body: body === undefined ? undefined : JSON.stringify(body),
          credentials: 'omit',
          cache: 'no-store',
        });
      } catch (e) {
        throw new ApiError(0, { reason: 'unreachable', message: 'the server did not answer (' + e.message + ')' });
      }
      let doc = null;
      try {
        doc = await res.json();
      } catch (e) {
        doc = null;
      }
      if (res.status === 401 && attempt < 3) {
        const why = token
          ? 'The server refused this token (' + ((doc && doc.reason) || 'unauthorized') + '). Enter another one.'
          : 'This server requires a token. Enter one to continue.';
        if (token) session.removeItem(TOKEN_KEY);
        await askForToken(why);
        continue;
      }
      if (!res.ok) throw new ApiError(res.status, doc || {});
      renderSession();
      return doc;
    }
  }

  // ── dialogs ─────────────────────────────────────────────────────────────

  let tokenPrompt = null;

  // One token prompt at a time; every request that got a 401 waits on it.
  function askForToken(why) {
    if (tokenPrompt) return tokenPrompt;
    tokenPrompt = new Promise((resolve, reject) => {
      const input = h('input', { id: 'token-input', type: 'password', autocomplete: 'off', spellcheck: 'false', placeholder: 'bearer token' });
      const dialog = h('dialog', { id: 'token-dialog', class: 'modal' },
        h('h2', { text: 'Token required' }),
        h('p', { text: why }),
        h('p', { class: 'muted', text: 'The token is kept in this tab only (sessionStorage) and sent as a Bearer token to the same API the CLI uses. It is forgotten when the tab closes.' }),
        h('label', {}, 'Token ', input),
        h('div', { class: 'buttons' },
          h('button', { id: 'token-cancel', type: 'button', class: 'secondary', onclick: () => done(null) }, 'Cancel'),
          h('button', { id: 'token-submit', type: 'button', onclick: () => done(input.value.trim()) }, 'Use token')));
      input.addEventListener('keydown', (e) => {
        if (e.key === 'Enter') done(input.value.trim());
      });
      dialog.addEventListener('cancel', (e) => {
        e.preventDefault();
        done(null);
      });
      function done(value) {
        dialog.close();
        dialog.remove();
        tokenPrompt = null;
        if (value) {
          session.setItem(TOKEN_KEY, value);
          renderSession();
          resolve();
        } else {
          reject(new ApiError(401, { reason: 'token_required', message: 'no token was given; the server requires one' }));
        }
      }
      document.body.appendChild(dialog);
      dialog.showModal();
      input.focus();
    });
    return tokenPrompt;
  }

  // A confirmation step: `body` nodes (inputs), `confirmLabel`, and `run`, which gets
  // called on confirm and whose answer (or error) the dialog shows.
  function confirmAction(title, description, body, confirmLabel, run) {
    const result = h('div', { class: 'dialog-result' });
    const confirmButton = h('button', { id: 'confirm-action', type: 'button', class: 'danger' }, confirmLabel);
    const closeButton = h('button', { id: 'confirm-cancel', type: 'button', class: 'secondary' }, 'Cancel');
    const dialog = h('dialog', { id: 'confirm-dialog', class: 'modal' },
      h('h2', { text: title }),
      h('p', { text: description }),
      body,
      result,
      h('div', { class: 'buttons' }, closeButton, confirmButton));
    let finished = false;
    closeButton.addEventListener('click', () => {
      dialog.close();
      dialog.remove();
      if (finished) render();
    });
    confirmButton.addEventListener('click', async () => {
      confirmButton.disabled = true;
      clear(result);
      try {
        const answer = await run();
        finished = true;
        add(result, notice('ok', 'Done: ' + ((answer && (answer.outcome || answer.status)) || 'accepted')));
        confirmButton.remove();
        closeButton.textContent = 'Close';
        closeButton.id = 'confirm-close';
      } catch (err) {
        add(result, errorBox(err));
        confirmButton.disabled = false;
      }
    });
    document.body.appendChild(dialog);
    dialog.showModal();
  }

  // ── layout ──────────────────────────────────────────────────────────────

  const NAV = [
    ['Workflows', 'workflows'],
    ['Task queues', 'task-queues'],
    ['Workers', 'workers'],
    ['Schedules', 'schedules'],
    ['Namespaces', 'namespaces'],
    ['Doctor', 'doctor'],
    ['Access', 'access'],
  ];

  function renderNav(current) {
    const nav = clear(document.getElementById('nav'));
    for (const [label, key] of NAV) {
      nav.appendChild(h('a', { href: '#/' + key, class: current === key ? 'active' : null, id: 'nav-' + key }, label));
    }
  }

  let namespacesLoaded = null;

  function renderSession() {
    const box = document.getElementById('session');
    if (!box) return;
    clear(box);
    const select = h('select', { id: 'namespace-select', title: 'namespace' });
    const names = namespacesLoaded || [namespace()];
    if (!names.includes(namespace())) names.unshift(namespace());
    for (const name of names) select.appendChild(h('option', { value: name, selected: name === namespace() }, name));
    select.addEventListener('change', () => {
      session.setItem(NS_KEY, select.value);
      render();
    });
    add(box, h('label', { class: 'ns' }, 'namespace ', select));
    if (session.getItem(TOKEN_KEY)) {
      add(box, h('span', { class: 'token-state', id: 'token-state' }, 'token set'),
        h('button', {
          type: 'button',
          class: 'secondary small',
          id: 'forget-token',
          onclick: () => {
            session.removeItem(TOKEN_KEY);
            render();
          },
        }, 'Forget token'));
    }
  }

  async function loadNamespaces() {
    try {
      const doc = await api('GET', '/namespaces');
      namespacesLoaded = (doc.namespaces || []).map((n) => n.name).filter(Boolean);
    } catch (e) {
      namespacesLoaded = null;
    }
    renderSession();
  }

  // ── pages ───────────────────────────────────────────────────────────────

  async function workflowsPage(main, query) {
    const form = h('form', { class: 'filters', id: 'workflow-filters' });
    const idInput = h('input', { name: 'id', id: 'filter-id', placeholder: 'id contains…', value: query.get('id') || '' });
    const typeInput = h('input', { name: 'type', id: 'filter-type', placeholder: 'workflow type', value: query.get('type') || '' });
    const statusSelect = h('select', { name: 'status', id: 'filter-status' });
    for (const s of ['', 'running', 'completed', 'failed']) {
      statusSelect.appendChild(h('option', { value: s, selected: (query.get('status') || '') === s }, s || 'any status'));
    }
    add(form, idInput, typeInput, statusSelect, h('button', { type: 'submit' }, 'Filter'));
    form.addEventListener('submit', (e) => {
      e.preventDefault();
      location.hash = route(['workflows'], { id: idInput.value.trim(), type: typeInput.value.trim(), status: statusSelect.value });
    });
    add(main, h('h1', { text: 'Workflows' }), form);
    const params = new URLSearchParams();
    params.set('page_size', '25');
    if (query.get('id')) params.set('query', query.get('id'));
    if (query.get('type')) params.set('workflow_type', query.get('type'));
    if (query.get('status')) params.set('status', query.get('status'));
    if (query.get('page')) params.set('next_page_token', query.get('page'));
    const doc = await api('GET', '/workflows?' + params.toString());
    const rows = (doc.workflows || []).map((w) => [
      h('a', { href: route(['workflows', w.workflow_id]), class: 'wf-link' }, w.workflow_id),
      w.workflow_type || '',
      statusBadge(w.status),
      w.task_queue || '',
      when(w.started_at),
      when(w.closed_at),
    ]);
    add(main, h('p', { class: 'muted' }, (doc.workflow_count ?? rows.length) + ' workflows in namespace ' + namespace()));
    add(main, table(['Workflow id', 'Type', 'Status', 'Task queue', 'Started', 'Closed'], rows, { empty: 'No workflow matches.', class: 'grid workflows' }));
    const pager = h('div', { class: 'pager' });
    const base = { id: query.get('id'), type: query.get('type'), status: query.get('status') };
    if (query.get('page')) add(pager, h('a', { href: route(['workflows'], base), id: 'first-page' }, '⇤ First page'));
    if (doc.next_page_token) add(pager, h('a', { href: route(['workflows'], { ...base, page: doc.next_page_token }), id: 'next-page' }, 'Next page →'));
    add(main, pager);
  }

  async function runPage(main, workflowId, runId) {
    const basePath = '/workflows/' + seg(workflowId);
    const runPath = runId ? basePath + '/runs/' + seg(runId) : basePath;
    const d = await api('GET', runPath);
    const run = d.run_id;
    const terminal = d.is_terminal === true;
    add(main,
      h('p', { class: 'crumbs' }, link('Workflows', ['workflows']), ' / '),
      h('h1', { class: 'wf-title' }, h('span', { id: 'run-workflow-id', text: workflowId }), ' ', statusBadge(d.status)));

    // The run's own `actions` block says what it accepts now; without it, a closed run
    // accepts none of these.
    const can = (name) => !terminal && !(d.actions && d.actions['can_' + name] === false);
    const actions = h('div', { class: 'actions' });
    const targetPath = basePath + '/runs/' + seg(run);
    add(actions,
      h('button', { id: 'action-signal', type: 'button', disabled: !can('signal'), onclick: () => signalDialog(targetPath) }, 'Signal…'),
      h('button', { id: 'action-cancel', type: 'button', class: 'warn', disabled: !can('cancel'), onclick: () => operationDialog(targetPath, 'cancel', workflowId) }, 'Cancel…'),
      h('button', { id: 'action-terminate', type: 'button', class: 'danger', disabled: !can('terminate'), onclick: () => operationDialog(targetPath, 'terminate', workflowId) }, 'Terminate…'),
      h('button', { id: 'action-repair', type: 'button', class: 'secondary', disabled: !can('repair'), onclick: () => operationDialog(targetPath, 'repair', workflowId) }, 'Repair…'),
      h('button', { id: 'action-refresh', type: 'button', class: 'secondary', onclick: () => render() }, 'Refresh'));
    add(main, actions);

    const failure = d.workflow_task_failure;
    add(main, h('div', { class: 'columns' },
      section('Summary', fields([
        ['Run', h('code', { text: run || '' })],
        ['Type', d.workflow_type],
        ['Status', statusBadge(d.status)],
        ['Task queue', d.task_queue ? link(d.task_queue, ['task-queues', d.task_queue]) : ''],
        ['Run number', d.run_number ? d.run_number + (d.run_count ? ' of ' + d.run_count : '') : ''],
        ['Business key', d.business_key],
        ['Started', when(d.started_at)],
        ['Closed', d.closed_at ? when(d.closed_at) : null],
        ['Closed reason', d.closed_reason],
        ['Waiting on', d.wait_reason],
        ['Failing task', failure && failure.message],
        ['History events', d.history_event_count],
      ])),
      section('Memo and search attributes',
        h('h3', { text: 'Memo' }), h('div', { id: 'run-memo' }, view(decodeMemo(d.memo))),
        h('h3', { text: 'Search attributes' }), view(d.search_attributes || {}))));

    const output = d.output ?? d.result ?? null;
    let outcome;
    if (d.failure && output === null) {
      outcome = section('Failure', h('div', { id: 'run-failure' },
        notice('error', (d.failure.exception_type || d.failure.type || 'failure') + ': ' + (d.failure.message || '')),
        pre(d.failure)));
    } else if (!terminal && output === null) {
      outcome = section('Result', h('p', { class: 'muted', id: 'run-result' }, 'The run has not closed yet.'));
    } else {
      outcome = section('Result', h('div', { id: 'run-result' }, pre(decodePayload(output))),
        d.failure ? [h('h3', { text: 'Failure' }), pre(d.failure)] : null);
    }
    add(main, h('div', { class: 'columns' },
      section('Input', h('div', { id: 'run-input' }, pre(decodePayload(d.input)))),
      outcome));

    if ((d.run_count || 1) > 1) {
      try {
        const runs = await api('GET', basePath + '/runs');
        add(main, section('Runs', table(['Run', 'Status', 'Started', 'Closed'], (runs.runs || []).map((r) => [
          h('a', { href: route(['workflows', workflowId, 'runs', r.run_id]) }, r.run_id + (r.is_current_run ? ' (current)' : '')),
          statusBadge(r.status), when(r.started_at), when(r.closed_at),
        ]))));
      } catch (e) {
        add(main, errorBox(e));
      }
    }

    const events = [];
    let token = null;
    for (let page = 0; page < 50; page++) {
      const q = token ? '?next_page_token=' + encodeURIComponent(token) : '';
      const doc = await api('GET', targetPath + '/history' + q);
      events.push(...(doc.events || []));
      if (!doc.next_page_token || doc.next_page_token === token) break;
      token = doc.next_page_token;
    }
    add(main, section('Timeline', timeline(events)));
    add(main, section('History (' + events.length + ' events)', historyTable(events)));
  }

  function decodeMemo(memo) {
    if (!memo || typeof memo !== 'object') return memo ?? {};
    const whole = decodePayload(memo);
    if (whole !== memo) return whole;
    const out = {};
    for (const [k, v] of Object.entries(memo)) out[k] = decodePayload(v);
    return out;
  }

  function eventType(e) {
    return e.event_type || e.type || '';
  }

  function eventKind(type) {
    if (type.startsWith('Activity')) return 'activity';
    if (type.startsWith('Timer')) return 'timer';
    if (type.startsWith('Signal')) return 'signal';
    if (type.startsWith('Child')) return 'child';
    if (type.startsWith('Update')) return 'update';
    if (/Failed|TimedOut|Terminated/.test(type)) return 'bad';
    if (type.startsWith('Workflow')) return 'workflow';
    return 'other';
  }

  // Activities (attempts and durations), timers, signals and children, one row each,
  // from the history's own events.
  function timeline(events) {
    const items = new Map();
    const order = [];
    const start = events.length ? Date.parse(events[0].timestamp) : NaN;
    const item = (key, init) => {
      if (!items.has(key)) {
        items.set(key, init);
        order.push(key);
      }
      return items.get(key);
    };
    for (const e of events) {
      const type = eventType(e);
      const p = e.payload || {};
      const at = Date.parse(e.timestamp);
      if (type.startsWith('Activity')) {
        const it = item('a:' + (p.activity_execution_id || p.sequence), { kind: 'Activity', name: p.activity_type || '', start: at, end: null, status: 'scheduled', attempts: 1, detail: '' });
        it.attempts = Math.max(it.attempts, Number(p.attempt_number || 1));
        if (type !== 'ActivityScheduled') {
          it.status = type.replace('Activity', '').toLowerCase();
          if (['ActivityCompleted', 'ActivityFailed', 'ActivityTimedOut', 'ActivityCancelled'].includes(type)) it.end = at;
          if (p.result !== undefined) it.detail = clip(JSON.stringify(decodePayload(p.result)), 120);
          if (p.failure) it.detail = clip((p.failure.message || JSON.stringify(p.failure)), 120);
        }
      } else if (type.startsWith('Timer')) {
        const it = item('t:' + (p.timer_id || p.sequence), { kind: 'Timer', name: p.delay_seconds !== undefined ? p.delay_seconds + ' s' : '', start: at, end: null, status: 'waiting', attempts: null, detail: p.fire_at ? 'fires at ' + p.fire_at : '' });
        if (type !== 'TimerScheduled') {
          it.status = type.replace('Timer', '').toLowerCase();
          it.end = at;
        }
      } else if (type === 'SignalReceived') {
        const it = item('s:' + e.sequence, { kind: 'Signal', name: p.signal_name || '', start: at, end: at, status: 'received', attempts: null, detail: '' });
        const input = p.input ?? p.arguments;
        if (input !== undefined) it.detail = clip(JSON.stringify(decodePayload(input)), 120);
      } else if (type.startsWith('Child')) {
        const childId = p.child_workflow_instance_id || p.child_workflow_id;
        const it = item('c:' + (p.sequence ?? childId), { kind: 'Child', name: p.child_workflow_type || '', start: at, end: null, status: 'scheduled', attempts: null, detail: '', child: childId });
        if (childId) it.child = childId;
        if (type !== 'ChildWorkflowScheduled') it.status = type.replace('ChildRun', '').replace('ChildWorkflow', '').toLowerCase();
        if (/Completed|Failed|Cancelled|Terminated|TimedOut/.test(type)) it.end = at;
      }
    }
    const rows = order.map((key) => {
      const it = items.get(key);
      const offset = Number.isNaN(start) ? '' : '+' + duration(it.start - start);
      return [
        h('span', { class: 'kind kind-' + it.kind.toLowerCase() }, it.kind),
        it.child ? [it.name ? it.name + ' ' : '', link(it.child, ['workflows', it.child])] : it.name,
        statusBadge(it.status),
        it.attempts ? String(it.attempts) : '',
        offset,
        it.end !== null ? duration(it.end - it.start) : h('span', { class: 'muted' }, 'open'),
        it.detail,
      ];
    });
    return table(['Kind', 'Name', 'Status', 'Attempts', 'Started', 'Duration', 'Details'], rows, { empty: 'No activities, timers, signals or children in this run.', class: 'grid timeline' });
  }

  function summary(e) {
    const p = e.payload || {};
    const parts = [];
    for (const key of ['activity_type', 'attempt_number', 'signal_name', 'update_name', 'timer_id', 'child_workflow_type', 'reason', 'message']) {
      if (p[key] !== undefined && p[key] !== null && p[key] !== '') parts.push(key + '=' + (typeof p[key] === 'object' ? JSON.stringify(p[key]) : p[key]));
    }
    if (p.failure && p.failure.message) parts.push('failure=' + p.failure.message);
    for (const key of ['input', 'result', 'output']) {
      if (p[key] !== undefined && p[key] !== null) parts.push(key + '=' + JSON.stringify(decodePayload(p[key])));
    }
    return clip(parts.join('  '), 160);
  }

  function historyTable(events) {
    const start = events.length ? Date.parse(events[0].timestamp) : NaN;
    const rows = events.map((e) => {
      const type = eventType(e);
      const p = e.payload || {};
      const child = p.child_workflow_instance_id || p.child_workflow_id;
      const decoded = {};
      for (const [k, v] of Object.entries(p)) decoded[k] = ['input', 'result', 'output', 'arguments', 'memo'].includes(k) ? decodePayload(v) : v;
      return [
        String(e.sequence ?? ''),
        h('span', { title: e.timestamp || '' }, Number.isNaN(start) ? '' : '+' + duration(Date.parse(e.timestamp) - start)),
        h('span', { class: 'event kind-' + eventKind(type) }, type),
        h('div', {}, child ? [link(child, ['workflows', child]), ' '] : null,
          h('details', {}, h('summary', {}, summary(e) || 'details'), pre(decoded))),
      ];
    });
    return table(['#', 'Time', 'Event', 'Details'], rows, { empty: 'No events yet.', class: 'grid history' });
  }

  function signalDialog(targetPath) {
    const name = h('input', { id: 'signal-name', placeholder: 'signal name', autocomplete: 'off' });
    const input = h('textarea', { id: 'signal-input', rows: 3, placeholder: 'arguments as JSON, e.g. ["hello"] (optional)' });
    confirmAction('Send a signal', 'The signal is delivered to the run\'s workflow code. Arguments: a JSON array is the list, any other JSON value one argument, other text one string.',
      h('div', { class: 'form' }, h('label', {}, 'Name ', name), h('label', {}, 'Arguments ', input)),
      'Send signal',
      () => {
        if (!name.value.trim()) return Promise.reject(new ApiError(0, { reason: 'invalid_input', message: 'a signal name is required' }));
        const requestId = 'keel-console-' + Math.random().toString(16).slice(2) + Date.now().toString(16);
        return api('POST', targetPath + '/signal/' + seg(name.value.trim()), { request_id: requestId, input: argumentsEnvelope(input.value) });
      });
  }

  function operationDialog(targetPath, op, workflowId) {
    const texts = {
      cancel: ['Cancel this run?', 'The run is cancelled: it closes as cancelled and its workflow code does not run further.', 'Cancel run'],
      terminate: ['Terminate this run?', 'The run is terminated at once: no cleanup runs. This cannot be undone.', 'Terminate run'],
      repair: ['Repair this run?', 'The server re-creates the run\'s missing task, if any.', 'Repair run'],
    }[op];
    const reason = op === 'repair' ? null : h('input', { id: 'operation-reason', placeholder: 'reason (optional)', autocomplete: 'off' });
    confirmAction(texts[0], texts[1] + ' Workflow: ' + workflowId,
      reason ? h('div', { class: 'form' }, h('label', {}, 'Reason ', reason)) : null,
      texts[2],
      () => {
        const body = reason && reason.value.trim() ? { reason: reason.value.trim() } : {};
        return api('POST', targetPath + '/' + op, body);
      });
  }

  async function taskQueuesPage(main) {
    add(main, h('h1', { text: 'Task queues' }));
    const doc = await api('GET', '/task-queues');
    const rows = (doc.task_queues || []).map((q) => {
      const st = q.stats || {};
      return [
        link(q.name, ['task-queues', q.name]),
        String((st.workflow_tasks || {}).ready ?? ''),
        String((st.activity_tasks || {}).ready ?? ''),
        String(q.current_leases ?? ''),
        String((q.pollers || []).length),
      ];
    });
    add(main, table(['Task queue', 'Workflow tasks ready', 'Activity tasks ready', 'Leased', 'Pollers'], rows, { empty: 'No task queue has been used in this namespace yet.' }));
  }

  async function taskQueuePage(main, name) {
    add(main, h('p', { class: 'crumbs' }, link('Task queues', ['task-queues']), ' / '), h('h1', { text: name }));
    const d = await api('GET', '/task-queues/' + seg(name));
    const st = d.stats || {};
    const line = (s) => 'ready ' + (s.ready ?? 0) + ' · leased ' + (s.leased ?? 0) + ' · parked polls ' + (s.parked_pollers ?? 0);
    add(main, section('Backlog', fields([
      ['Workflow tasks', line(st.workflow_tasks || {})],
      ['Activity tasks', line(st.activity_tasks || {})],
    ])));
    add(main, section('Pollers', table(['Worker', 'Build id', 'Runtime', 'Status', 'Last heartbeat'], (d.pollers || []).map((p) => [
      p.worker_id ? link(p.worker_id, ['workers', p.worker_id]) : '',
      p.build_id || h('span', { class: 'muted' }, 'unversioned'),
      p.runtime || '',
      statusBadge(p.status),
      when(p.last_heartbeat_at || p.last_poll_at),
    ]), { empty: 'No worker polls this queue.' })));
    try {
      const b = await api('GET', '/task-queues/' + seg(name) + '/build-ids');
      add(main, section('Build-id cohorts', table(
        ['Build id', 'Rollout', 'Active', 'Draining', 'Stale', 'Runtimes', 'SDK versions', 'First seen', 'Last heartbeat'],
        (b.build_ids || []).map((c) => [
          c.build_id || h('span', { class: 'muted' }, 'unversioned'),
          statusBadge(c.rollout_status || c.drain_intent),
          String(c.active_worker_count ?? ''),
          String(c.draining_worker_count ?? ''),
          String(c.stale_worker_count ?? ''),
          (c.runtimes || []).join(', '),
          (c.sdk_versions || []).join(', '),
          when(c.first_seen_at),
          when(c.last_heartbeat_at),
        ]),
        { empty: 'No build id has been seen on this queue.' })));
    } catch (e) {
      add(main, section('Build-id cohorts', errorBox(e)));
    }
  }

  async function workersPage(main) {
    add(main, h('h1', { text: 'Workers' }));
    const doc = await api('GET', '/workers');
    add(main, table(['Worker id', 'Task queue', 'Build id', 'Status', 'Last heartbeat'], (doc.workers || []).map((w) => [
      link(w.worker_id, ['workers', w.worker_id]), w.task_queue || '', w.build_id || '', statusBadge(w.status), when(w.last_heartbeat_at),
    ]), { empty: 'No worker registered in this namespace.' }));
  }

  async function workerPage(main, id) {
    add(main, h('p', { class: 'crumbs' }, link('Workers', ['workers']), ' / '), h('h1', { text: id }));
    const d = await api('GET', '/workers/' + seg(id));
    add(main, section('Worker', view(d)));
  }

  function specText(spec) {
    const s = spec || {};
    return [...(s.cron_expressions || []).map((c) => 'cron ' + c), ...(s.intervals || []).map((i) => 'every ' + i.every)].join('; ');
  }

  async function schedulesPage(main, query) {
    add(main, h('h1', { text: 'Schedules' }));
    const q = query.get('page') ? '?next_page_token=' + encodeURIComponent(query.get('page')) : '';
    const doc = await api('GET', '/schedules' + q);
    add(main, table(['Schedule id', 'Workflow type', 'Status', 'Spec', 'Next fire', 'Last fired'], (doc.schedules || []).map((s) => [
      link(s.schedule_id, ['schedules', s.schedule_id]), s.workflow_type || (s.action || {}).workflow_type || '', statusBadge(s.status), specText(s.spec), when(s.next_fire_at), when(s.last_fired_at),
    ]), { empty: 'No schedule in this namespace.' }));
    if (doc.next_page_token) add(main, h('div', { class: 'pager' }, h('a', { href: route(['schedules'], { page: doc.next_page_token }) }, 'Next page →')));
  }

  async function schedulePage(main, id) {
    add(main, h('p', { class: 'crumbs' }, link('Schedules', ['schedules']), ' / '), h('h1', {}, h('span', { text: id }), ' '));
    const d = await api('GET', '/schedules/' + seg(id));
    main.querySelector('h1').appendChild(statusBadge(d.status));
    const path = '/schedules/' + seg(id);
    const paused = d.status === 'paused' || d.paused === true;
    const note = () => h('input', { id: 'schedule-note', placeholder: 'note (optional)', autocomplete: 'off' });
    const act = (label, op, text) => h('button', {
      id: 'schedule-' + op,
      type: 'button',
      class: op === 'trigger' ? null : 'secondary',
      onclick: () => {
        const input = op === 'trigger' ? null : note();
        confirmAction(label + ' schedule?', text, input ? h('div', { class: 'form' }, h('label', {}, 'Note ', input)) : null, label, () => {
          const body = input && input.value.trim() ? { note: input.value.trim() } : {};
          return api('POST', path + '/' + op, body);
        });
      },
    }, label + '…');
    add(main, h('div', { class: 'actions' },
      paused ? act('Resume', 'resume', 'The schedule fires again at its next time.') : act('Pause', 'pause', 'The schedule stops firing until resumed.'),
      act('Trigger', 'trigger', 'Starts the schedule\'s workflow once, now.')));
    const action = d.action || {};
    const info = d.info || {};
    add(main, h('div', { class: 'columns' },
      section('Schedule', fields([
        ['Spec', specText(d.spec)],
        ['Workflow type', action.workflow_type],
        ['Task queue', action.task_queue],
        ['Overlap policy', d.overlap_policy],
        ['Next fire', when(d.next_fire_at)],
        ['Last fired', when(d.last_fired_at)],
        ['Fires', d.fires_count],
        ['Note', d.note],
      ])),
      section('Next fire times', table(['Time', ''], (info.future_action_times || []).slice(0, 10).map((t) => [String(t), when(t)]), { empty: 'No upcoming fire time.' }))));
    add(main, section('Recent actions', table(['Workflow', 'Run', 'Started'], (info.recent_actions || []).map((a) => [
      a.workflow_id ? link(a.workflow_id, ['workflows', a.workflow_id]) : '', h('code', { text: a.run_id || '' }), when(a.started_at),
    ]), { empty: 'The schedule has not started a workflow yet.' })));
  }

  async function namespacesPage(main) {
    add(main, h('h1', { text: 'Namespaces' }));
    const doc = await api('GET', '/namespaces');
    const rows = (doc.namespaces || []).map((n) => [
      h('button', {
        type: 'button',
        class: n.name === namespace() ? 'small' : 'secondary small',
        onclick: () => {
          session.setItem(NS_KEY, n.name);
          location.hash = '#/workflows';
          render();
        },
      }, n.name === namespace() ? 'current' : 'switch'),
      n.name,
      n.description || '',
      n.retention_days !== undefined ? String(n.retention_days) : (n.workflow_execution_retention_days !== undefined ? String(n.workflow_execution_retention_days) : ''),
      statusBadge(n.status || 'active'),
    ]);
    add(main, table(['', 'Name', 'Description', 'Retention (days)', 'Status'], rows, { empty: 'No namespace is visible to this token.' }));
  }

  async function doctorPage(main) {
    add(main, h('h1', { text: 'Operator doctor' }),
      h('p', { class: 'muted', text: 'The operator recovery API\'s health report for namespace ' + namespace() + ': the admin store, ingress, deployments, services, invocations and the audit log, each with its status. Each run is recorded in the operator audit log. Needs the operator role.' }));
    const out = h('div', { id: 'doctor-report' });
    const button = h('button', { id: 'run-doctor', type: 'button' }, 'Run the doctor');
    button.addEventListener('click', async () => {
      button.disabled = true;
      clear(out);
      add(out, h('p', { class: 'muted' }, 'Running…'));
      try {
        const d = await api('POST', '/v2/admin/operator/restate/doctor', {});
        clear(out);
        const components = Object.entries(d).filter(([, c]) => c && typeof c === 'object' && typeof c.status === 'string');
        const scalars = Object.entries(d).filter(([, v]) => v === null || typeof v !== 'object');
        add(out, section('Report', fields(scalars.map(([k, v]) => [k, k === 'status' ? statusBadge(v) : String(v ?? '')]))));
        add(out, section('Components', table(['Component', 'Status', 'Details'], components.map(([name, c]) => [
          name, statusBadge(c.status), c.error ? h('span', { class: 'bad-text' }, String(c.error)) : componentDetails(c),
        ]), { class: 'grid doctor' })));
      } catch (e) {
        clear(out);
        add(out, errorBox(e));
      }
      button.disabled = false;
    });
    add(main, h('div', { class: 'actions' }, button), out);
  }

  // A doctor component's fields in one line: scalars as they are, lists by their length.
  function componentDetails(c) {
    const parts = [];
    for (const [k, v] of Object.entries(c)) {
      if (k === 'status' || k === 'error' || v === null || v === undefined) continue;
      if (Array.isArray(v)) parts.push(k + ': ' + v.length);
      else if (typeof v === 'object') parts.push(k + ': ' + clip(JSON.stringify(v), 80));
      else parts.push(k + ': ' + v);
    }
    return parts.join(' · ');
  }

  function accessPage(main) {
    const token = session.getItem(TOKEN_KEY);
    add(main, h('h1', { text: 'Access' }),
      section('This tab', fields([
        ['Token', token ? 'set (kept in this tab only, sent as a Bearer token)' : 'none (the server asks for one if it requires tokens)'],
        ['Namespace', namespace()],
      ]), h('div', { class: 'actions' },
        h('button', { type: 'button', id: 'enter-token', onclick: () => askForToken('Enter a token for this tab.').then(render, () => {}) }, token ? 'Use another token' : 'Enter a token'),
        token ? h('button', { type: 'button', class: 'secondary', onclick: () => { session.removeItem(TOKEN_KEY); render(); } }, 'Forget token') : null)),
      section('What a token may do',
        h('p', { text: 'The console calls the same API routes as the keel command line, so it can do exactly what its token may do; the server checks every request. The server does not tell a client its token\'s roles, so the console shows a refusal (403) where a role is missing. The roles:' }),
        table(['Role', 'Allows'], [
          ['operator', 'reading workflows, task queues, workers, schedules and namespaces; signal, cancel, terminate, repair; schedule pause, resume and trigger; the operator doctor'],
          ['admin', 'everything an operator may, plus creating and changing namespaces, deleting workers, and the audit trail'],
          ['worker', 'the worker protocol only (polling and completing tasks): no console page'],
        ])));
  }

  // ── the router ──────────────────────────────────────────────────────────

  let renderSerial = 0;

  async function render() {
    const serial = ++renderSerial;
    const raw = location.hash.replace(/^#\/?/, '');
    const [pathText, queryText] = raw.split('?');
    const parts = pathText.split('/').filter((p) => p !== '').map((p) => {
      try {
        return decodeURIComponent(p);
      } catch (e) {
        return p;
      }
    });
    const query = new URLSearchParams(queryText || '');
    const page = parts[0] || 'workflows';
    renderNav(page);
    renderSession();
    const main = clear(document.getElementById('main'));
    const body = h('div', { class: 'page', id: 'page-' + page });
    main.appendChild(body);
    document.title = 'Keel · ' + (NAV.find(([, k]) => k === page) || ['console'])[0];
    try {
      if (page === 'workflows' && parts.length === 1) await workflowsPage(body, query);
      else if (page === 'workflows' && parts.length === 2) await runPage(body, parts[1], null);
      else if (page === 'workflows' && parts[2] === 'runs' && parts.length === 4) await runPage(body, parts[1], parts[3]);
      else if (page === 'task-queues' && parts.length === 1) await taskQueuesPage(body);
      else if (page === 'task-queues' && parts.length === 2) await taskQueuePage(body, parts[1]);
      else if (page === 'workers' && parts.length === 1) await workersPage(body);
      else if (page === 'workers' && parts.length === 2) await workerPage(body, parts[1]);
      else if (page === 'schedules' && parts.length === 1) await schedulesPage(body, query);
      else if (page === 'schedules' && parts.length === 2) await schedulePage(body, parts[1]);
      else if (page === 'namespaces') await namespacesPage(body);
      else if (page === 'doctor') await doctorPage(body);
      else if (page === 'access') accessPage(body);
      else add(body, h('h1', { text: 'Not found' }), h('p', {}, 'The console has no page at ', h('code', { text: '#/' + pathText }), '. ', link('Go to workflows', ['workflows'])));
    } catch (err) {
      if (serial !== renderSerial) return;
      add(body, errorBox(err));
    }
    if (serial === renderSerial) body.setAttribute('data-loaded', 'true');
  }

  window.addEventListener('hashchange', render);
  window.addEventListener('DOMContentLoaded', () => {
    render();
    loadNamespaces();
  });
})();
