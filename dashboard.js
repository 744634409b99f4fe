// The operator's page: reads the JSON API with the token typed in (HTTP Basic, kept
// in sessionStorage: this tab only, gone when it closes). Every value from the API
// is put in the page as text (el() and text nodes), never parsed as HTML.
'use strict';

const REFRESH_MS = 5000;
const CHART_POINTS = 120;
const VIEWS = ['signin', 'live', 'channels', 'channel', 'users', 'nodes', 'events', 'clients'];
const NEAR = 0.8;  // a usage at 80 % of a limit is "near" it

let admin = false;
let timer = null;
let shown = null;     // the hash being shown: a refresh of an older view is dropped
let channelsCursor = null;

// The API -----------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, body) {
    super(body && body.msg ? body.msg : 'the server answered ' + status);
    this.status = status;
    this.body = body;
  }
}

function credentials() {
  return sessionStorage.getItem('livestream.auth');
}

// GET (or another method) a path under /v1 with the token; resolves to `data`.
async function api(path, method) {
  const auth = credentials();
  if (!auth) throw new ApiError(401, null);
  let answer;
  try {
    // no-store: answers carry stream keys. omit: the browser adds no credentials
    // of its own, and so never opens its login prompt on a 401.
    answer = await fetch('v1/' + path, {
      method: method || 'GET', cache: 'no-store', credentials: 'omit',
      headers: {'Authorization': 'Basic ' + auth, 'Accept': 'application/json'}});
  } catch (error) {
    throw new ApiError(0, {msg: 'cannot reach the API (' + error.message + ')'});
  }
  let body = null;
  try { body = await answer.json(); } catch (error) { body = null; }
  if (!answer.ok) throw new ApiError(answer.status, body);
  return body ? body.data : null;
}

// Every page of a list (up to `most` items).
async function all(path, most) {
  const items = [];
  let cursor = null;
  do {
    const sep = path.includes('?') ? '&' : '?';
    const page = await api(path + sep + 'limit=100' + (cursor ? '&cursor=' + encodeURIComponent(cursor) : ''));
    items.push(...page.items);
    cursor = page.nextCursor;
  } while (cursor && items.length < (most || 1000));
  return items;
}

// An endpoint this server may not have yet (404 or 405): null rather than an error.
async function optional(path) {
  try {
    return await api(path);
  } catch (error) {
    if (error.status === 404 || error.status === 405) return null;
    throw error;
  }
}

// The page ------------------------------------------------------------------------

function $(id) { return document.getElementById(id); }

// An element with attributes and children; strings become text nodes.
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value !== null && value !== undefined) node.setAttribute(name, value);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function svg(tag, attrs, ...children) {
  const node = document.createElementNS('http://www.w3.org/2000/svg', tag);
  for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, value);
  for (const child of children) {
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function rows(tableId, trs, empty) {
  const body = $(tableId).tBodies[0];
  body.replaceChildren(...trs);
  if (!trs.length && empty) {
    const columns = $(tableId).tHead.rows[0].cells.length;
    body.append(el('tr', {}, el('td', {colspan: columns, class: 'note'}, empty)));
  }
}

function td(value, cls) { return el('td', cls ? {class: cls} : {}, value); }

function setStatus(text, isError) {
  const status = $('status');
  status.textContent = text;
  status.className = isError ? 'error' : '';
}

// Figures -------------------------------------------------------------------------

function duration(seconds) {
  if (seconds === null || seconds === undefined) return '–';
  seconds = Math.round(seconds);
  const h = Math.floor(seconds / 3600), m = Math.floor(seconds % 3600 / 60), s = seconds % 60;
  return (h ? h + 'h ' : '') + (h || m ? m + 'm ' : '') + s + 's';
}

function kbps(value) {
  if (value === null || value === undefined) return '–';
  return value >= 1000 ? (value / 1000).toFixed(2) + ' Mb/s' : Math.round(value) + ' kb/s';
}

function when(iso) {
  if (!iso) return '–';
  const date = new Date(iso);
  return isNaN(date) ? String(iso) : date.toLocaleString();
}

function video(v) {
  if (!v || !v.codec) return '–';
  return v.codec + (v.width ? ' ' + v.width + '×' + v.height : '') + (v.fps ? ' ' + v.fps + ' fps' : '');
}

function audio(a) {
  if (!a || !a.codec) return '–';
  return a.codec + (a.sampleRate ? ' ' + a.sampleRate / 1000 + ' kHz' : '') +
    (a.channels ? ' ' + (a.channels === 1 ? 'mono' : a.channels === 2 ? 'stereo' : a.channels + ' ch') : '');
}

function channelLink(channel) {
  return el('a', {href: '#channel/' + encodeURIComponent(channel.id), class: 'channel-link'},
            channel.name);
}

function limitText(used, limit) {
  return used + ' / ' + (limit === null || limit === undefined ? '∞' : limit);
}

// Views ---------------------------------------------------------------------------

async function showLive() {
  // A call per live channel every 5 s: fine for a small deployment, capped for a big one.
  const [stats, page] = await Promise.all([api('stats'), api('channels?status=live&limit=100')]);
  const live = page.items;
  const figures = await Promise.all(live.map(channel =>
    api('channels/' + encodeURIComponent(channel.id) + '/stats').catch(() => null)));
  $('total-live').textContent = stats.liveChannels;
  $('total-bitrate').textContent = kbps(stats.bitrateKbpsIn);
  $('total-viewers').textContent = stats.viewers === undefined ? '–' : stats.viewers;
  rows('live-table', live.map((channel, i) => {
    const current = (figures[i] && figures[i].current) || {};
    const viewers = current.viewers === undefined ? '–' : current.viewers;
    return el('tr', {'data-channel-id': channel.id},
      el('td', {}, channelLink(channel),
         current.connected === false ? el('span', {class: 'sub reconnecting'}, 'encoder away: waiting for it to reconnect') : null),
      td(channel.userId),
      td(channel.ingest || '–'),
      td(duration(current.durationSeconds)),
      el('td', {class: 'num bitrate'}, kbps(current.bitrateKbps)),
      el('td', {class: 'num viewers'}, String(viewers),
         current.viewersHls === undefined ? null :
           el('span', {class: 'sub'}, 'RTMP ' + current.viewersRtmp + ' · HLS ' + current.viewersHls)),
      td(video(current.video)),
      td(audio(current.audio)));
  }), 'No channel is live.');
  $('live-note').textContent = (page.total > live.length ? 'The newest ' + live.length + ' of ' +
    page.total + ' live channels. ' : '') + 'Refreshed every ' + REFRESH_MS / 1000 +
    ' s; last at ' + new Date().toLocaleTimeString() + '.';
}

async function showChannels(more) {
  const page = await api('channels?limit=100' + (more && channelsCursor ? '&cursor=' + encodeURIComponent(channelsCursor) : ''));
  const trs = page.items.map(channel => el('tr', {'data-channel-id': channel.id},
    el('td', {}, channelLink(channel)), td(channel.userId),
    td(channel.status, 'state-' + channel.status), td(channel.ingest || '–'), td(when(channel.createdAt))));
  if (more) $('channels-table').tBodies[0].append(...trs);
  else rows('channels-table', trs, 'No channels yet.');
  channelsCursor = page.nextCursor;
  $('channels-more').hidden = !channelsCursor;
  $('channels-note').textContent = page.total + ' channel' + (page.total === 1 ? '' : 's') + ', newest first.';
}

function field(list, name, value) {
  list.append(el('dt', {}, name), value instanceof Node ? el('dd', {}, value) : el('dd', {}, value === null || value === undefined || value === '' ? '–' : String(value)));
}

function streamKeyField(streamId) {
  const wrap = el('span', {});
  const button = el('button', {type: 'button', id: 'show-key'}, 'Show stream key');
  button.addEventListener('click', () => {
    wrap.replaceChildren(el('code', {id: 'stream-key'}, streamId));
  });
  wrap.append(button);
  return wrap;
}

async function showChannel(channelId, sessionId, refresh) {
  const path = 'channels/' + encodeURIComponent(channelId);
  if (!refresh) {  // not the previous channel's while this one loads
    for (const id of ['channel-name', 'channel-fields', 'chart']) $(id).replaceChildren();
    rows('sessions-table', []);
  }
  const [channel, stats, sessions] = await Promise.all(
    [api(path), api(path + '/stats'), api(path + '/sessions?limit=50')]);
  $('channel-name').textContent = channel.name;
  if (!refresh) {  // the fields stay as they are, the stream key shown or not
    const fields = $('channel-fields');
    fields.replaceChildren();
    field(fields, 'Id', el('code', {}, channel.id));
    field(fields, 'User', channel.userId);
    if (channel.clientId !== undefined) field(fields, 'Client', channel.clientId);
    field(fields, 'Status', el('span', {class: 'state-' + stats.status, id: 'channel-status'}, stats.status));
    field(fields, 'Description', channel.description);
    if (channel.ingest !== undefined) field(fields, 'Node', channel.ingest);
    field(fields, 'Server (OBS)', el('code', {}, channel.streamUrl));
    field(fields, 'Stream key (OBS)', streamKeyField(channel.streamId));
    field(fields, 'HLS', el('code', {}, channel.playback && channel.playback.hls));
    field(fields, 'RTMP playback', el('code', {}, channel.playback && channel.playback.rtmp));
    field(fields, 'Metadata', el('code', {}, JSON.stringify(channel.metadata)));
    field(fields, 'Broadcasts', stats.totals.sessions + ', ' + duration(stats.totals.liveSeconds) + ' on air');
    field(fields, 'Created', when(channel.createdAt));
  } else {
    const status = $('channel-status');
    status.textContent = stats.status;
    status.className = 'state-' + stats.status;
  }
  rows('sessions-table', sessions.items.map(session => el('tr', {'data-session-id': session.id},
    td(when(session.startedAt)), td(session.endedAt ? when(session.endedAt) : 'live'),
    td(duration(session.durationSeconds), 'num'), td(kbps(session.avgBitrateKbps), 'num'),
    td(kbps(session.peakBitrateKbps), 'num'), td(session.peakViewers, 'num'),
    td(session.endReason || (session.endedAt ? '–' : 'live now'), session.endReason ? '' : 'state-live'),
    el('td', {}, el('a', {href: '#channel/' + encodeURIComponent(channel.id) + '/' + encodeURIComponent(session.id)}, 'chart')))),
    'Never broadcast yet.');
  const chosen = sessionId || (stats.current && stats.current.sessionId) ||
    (sessions.items[0] && sessions.items[0].id);
  if (!chosen) {
    $('chart-title').textContent = 'Broadcast';
    $('chart').replaceChildren(el('p', {class: 'note'}, 'No broadcast to chart yet.'));
    return;
  }
  const session = await api(path + '/sessions/' + encodeURIComponent(chosen) + '?points=' + CHART_POINTS);
  $('chart-title').textContent = (session.endedAt ? 'Broadcast of ' : 'Live broadcast since ') +
    when(session.startedAt) + (session.endedAt ? ' (' + (session.endReason || 'ended') + ')' : '');
  $('chart').replaceChildren(chart(session));
}

// An SVG chart of a session's samples: bitrate (left scale) and viewers (right scale).
function chart(session) {
  const samples = session.samples || [];
  const W = 760, H = 260, L = 64, R = 48, T = 16, B = 30;
  const root = svg('svg', {viewBox: '0 0 ' + W + ' ' + H, role: 'img', id: 'session-chart',
                           'data-points': samples.length});
  root.append(svg('title', {}, 'Bitrate and viewers over the broadcast'));
  if (!samples.length) {
    root.append(svg('text', {x: L, y: H / 2}, 'No measurement yet: the first comes with the ingest\'s first update.'));
    return root;
  }
  const times = samples.map(sample => Date.parse(sample.at));
  const start = Date.parse(session.startedAt);
  const end = session.endedAt ? Date.parse(session.endedAt) : Math.max(Date.now(), times[times.length - 1]);
  const maxBitrate = Math.max(1, ...samples.map(sample => sample.bitrateKbps || 0)) * 1.1;
  const maxViewers = Math.max(1, ...samples.map(sample => sample.viewers || 0));
  const x = t => L + (W - L - R) * (end > start ? (t - start) / (end - start) : 0);
  const yBitrate = v => H - B - (H - T - B) * (v || 0) / maxBitrate;
  const yViewers = v => H - B - (H - T - B) * (v || 0) / maxViewers;
  root.append(svg('line', {class: 'axis', x1: L, y1: H - B, x2: W - R, y2: H - B}),
              svg('line', {class: 'axis', x1: L, y1: T, x2: L, y2: H - B}),
              svg('line', {class: 'axis', x1: W - R, y1: T, x2: W - R, y2: H - B}),
              svg('text', {x: L - 6, y: T + 4, 'text-anchor': 'end', class: 'bitrate'}, kbps(maxBitrate)),
              svg('text', {x: L - 6, y: H - B, 'text-anchor': 'end', class: 'bitrate'}, '0'),
              svg('text', {x: W - R + 6, y: T + 4, class: 'viewers'}, String(maxViewers)),
              svg('text', {x: W - R + 6, y: H - B, class: 'viewers'}, '0'),
              svg('text', {x: L, y: H - 8}, new Date(start).toLocaleTimeString()),
              svg('text', {x: W - R, y: H - 8, 'text-anchor': 'end'}, new Date(end).toLocaleTimeString()),
              svg('text', {x: L + 8, y: T + 4, class: 'bitrate'}, '— bitrate'),
              svg('text', {x: L + 90, y: T + 4, class: 'viewers'}, '— viewers'));
  const line = (cls, y, key) => svg('polyline', {class: cls, points: samples.map(
    (sample, i) => x(times[i]).toFixed(1) + ',' + y(sample[key]).toFixed(1)).join(' ')});
  root.append(line('bitrate', yBitrate, 'bitrateKbps'), line('viewers', yViewers, 'viewers'));
  samples.forEach((sample, i) => {
    root.append(svg('circle', {class: 'bitrate point', cx: x(times[i]).toFixed(1), cy: yBitrate(sample.bitrateKbps).toFixed(1), r: 2.5},
                    svg('title', {}, when(sample.at) + ': ' + kbps(sample.bitrateKbps))),
                svg('circle', {class: 'viewers', cx: x(times[i]).toFixed(1), cy: yViewers(sample.viewers).toFixed(1), r: 2},
                    svg('title', {}, when(sample.at) + ': ' + sample.viewers + ' viewers')));
  });
  return root;
}

function usageState(user) {
  const pairs = [[user.usage.channels, user.limits.maxChannels],
                 [user.usage.liveChannels, user.limits.maxLiveChannels]];
  let worst = 0;
  for (const [used, limit] of pairs) {
    if (limit === null || limit === undefined) continue;
    worst = Math.max(worst, limit === 0 ? 1 : used / limit);
  }
  return worst;
}

async function showUsers() {
  const users = await all('users', 5000);
  const close = users.map(user => [usageState(user), user]).filter(([state]) => state >= NEAR)
    .sort((a, b) => b[0] - a[0]);
  rows('users-table', close.map(([state, user]) => el('tr', {'data-user-id': user.userId},
    td(user.userId),
    td(limitText(user.usage.channels, user.limits.maxChannels)),
    td(limitText(user.usage.liveChannels, user.limits.maxLiveChannels)),
    td(user.limits.maxBitrateKbps === null ? '∞' : kbps(user.limits.maxBitrateKbps)),
    td(user.limits.maxSessionSeconds === null ? '∞' : duration(user.limits.maxSessionSeconds)),
    td(state >= 1 ? 'at a limit' : 'near a limit', state >= 1 ? 'at' : 'near'))),
    'No user is near a limit.');
  $('users-note').textContent = (users.length - close.length) + ' of ' + users.length +
    ' users are under ' + NEAR * 100 + ' % of their channel and live-channel limits.';
}

async function showNodes() {
  const nodes = await optional('ingest');
  if (nodes === null) {
    // Before GET /v1/ingest: the one ingest /v1/stats reports, so a down node still shows.
    const stats = await api('stats');
    const ingest = (stats.system && stats.system.ingest) || [];
    rows('nodes-table', ingest.map(node => el('tr', {},
      td(node.url), td('–'), td(node.reachable ? 'yes' : 'no', node.reachable ? 'yes' : 'no'),
      td('–'), td(node.streams, 'num'), td(kbps(node.bitrateKbpsIn), 'num'), td('–', 'num'), td('–'))));
    $('nodes-note').textContent = 'Ingest nodes (GET /v1/ingest) are not available on this server; ' +
      'above, the ingest its statistics read.';
    return;
  }
  const list = Array.isArray(nodes) ? nodes : nodes.items || [];
  rows('nodes-table', list.map(node => el('tr', {'data-node': node.name},
    td(node.name), td(node.kind), td(node.reachable ? 'yes' : 'no', node.reachable ? 'yes' : 'no'),
    td(node.accepting === false ? 'draining' : 'accepting', node.accepting === false ? 'near' : ''),
    td(node.liveStreams, 'num'), td(kbps(node.bitrateKbpsIn), 'num'), td(node.viewers, 'num'),
    el('td', {}, el('code', {}, node.rtmpUrl)))), 'No ingest node.');
  $('nodes-note').textContent = list.length + ' node' + (list.length === 1 ? '' : 's') + '.';
}

function delivery(event) { return event.delivery || event; }

async function showEvents() {
  const [failed, recent] = await Promise.all([optional('events?status=failed&limit=50'),
                                              optional('events?limit=50')]);
  if (failed === null || recent === null) {
    rows('events-table', []);
    $('events-note').textContent = 'Events and webhooks (GET /v1/events) are not available on this server.';
    return;
  }
  const seen = new Set(failed.items.map(event => event.id));
  const events = failed.items.concat(recent.items.filter(event => !seen.has(event.id)));
  rows('events-table', events.map(event => {
    const state = delivery(event);
    const data = event.data || {};
    const channelId = (data.channel && data.channel.id) || data.channelId;
    const button = el('button', {type: 'button', class: 'redeliver'}, 'Redeliver');
    button.addEventListener('click', () => redeliver(event.id, button));
    return el('tr', {'data-event-id': event.id},
      td(when(event.createdAt)), td(event.type),
      channelId ? el('td', {}, channelLink({id: channelId, name: (data.channel && data.channel.name) || channelId})) : td('–'),
      td(state.status, 'state-' + state.status), td(state.attempts, 'num'),
      td([state.lastStatus, state.lastError].filter(part => part !== null && part !== undefined).join(' ') || '–'),
      td(when(state.nextAttemptAt)), el('td', {}, state.status === 'none' ? null : button));
  }), 'No events yet.');
  const count = failed.items.length;
  $('events-note').textContent = (count ? count + ' failed deliver' + (count === 1 ? 'y' : 'ies') + ' first, then '
                                  : 'No failed delivery; ') + 'the latest events.';
}

async function redeliver(eventId, button) {
  button.disabled = true;
  try {
    await api('events/' + encodeURIComponent(eventId) + '/redeliver', 'POST');
    button.textContent = 'Queued';
  } catch (error) {
    button.disabled = false;
    setStatus('Redeliver failed: ' + error.message, true);
  }
}

async function showClients() {
  const clients = await all('clients', 1000);
  rows('clients-table', clients.map(client => el('tr', {},
    td(client.name), td(client.role), el('td', {}, el('code', {}, client.tokenId)),
    td(when(client.createdAt)))), 'No clients.');
  $('clients-note').textContent = clients.length + ' client' + (clients.length === 1 ? '' : 's') + '.';
}

// Navigation ----------------------------------------------------------------------

function show(view) {
  for (const name of VIEWS) $('view-' + name).hidden = name !== view;
  for (const link of document.querySelectorAll('nav a')) {
    link.classList.toggle('current', link.dataset.view === view ||
                          (view === 'channel' && link.dataset.view === 'channels'));
  }
}

// Show the view the address names, then refresh it every REFRESH_MS while shown.
async function route(refresh) {
  clearTimeout(timer);
  if (!credentials()) { show('signin'); $('nav').hidden = true; return; }
  const hash = location.hash.replace(/^#/, '') || 'live';
  const [name, ...args] = hash.split('/').map(decodeURIComponent);
  const views = {live: showLive, channels: () => showChannels(false), users: showUsers,
                 events: showEvents, nodes: showNodes, clients: showClients,
                 channel: () => showChannel(args[0], args[1], refresh)};
  const view = views[name] ? name : 'live';
  if (!refresh) show(view);
  shown = hash;
  try {
    await (views[name] || showLive)();
    if (shown !== hash) return;
    setStatus('');
  } catch (error) {
    if (shown !== hash) return;
    if (error.status === 401) { signOut('Your token no longer signs in (' + error.message + ').'); return; }
    setStatus(error.message, true);
  }
  if (['live', 'channel'].includes(view)) timer = setTimeout(() => route(true), REFRESH_MS);
}

async function signIn(event) {
  event.preventDefault();
  const tokenId = $('token-id').value.trim(), secret = $('token-secret').value;
  const message = $('signin-error');
  message.textContent = '';
  sessionStorage.setItem('livestream.auth', btoa(unescape(encodeURIComponent(tokenId + ':' + secret))));
  try {
    await start();
    $('token-secret').value = '';
  } catch (error) {
    sessionStorage.removeItem('livestream.auth');
    message.textContent = error.status === 401 ? 'Sign-in failed: wrong token id or secret.'
      : error.status === 429 ? 'Too many failed sign-ins from this address: ' + error.message
      : 'Sign-in failed: ' + error.message;
  }
}

// With credentials stored: learn the role, show the navigation, then the view.
async function start() {
  const stats = await api('stats');
  admin = stats.system !== undefined;
  for (const link of document.querySelectorAll('.admin-only')) link.hidden = !admin;
  $('who').textContent = atob(credentials()).split(':')[0] + (admin ? ' (admin)' : ' (app)');
  $('nav').hidden = false;
  if (!location.hash || location.hash === '#signin') location.hash = '#live';
  else route(false);
}

function signOut(why) {
  clearTimeout(timer);
  sessionStorage.removeItem('livestream.auth');
  $('nav').hidden = true;
  $('signin-error').textContent = why || '';
  setStatus('');
  show('signin');
}

document.addEventListener('DOMContentLoaded', () => {
  $('signin-form').addEventListener('submit', signIn);
  $('sign-out').addEventListener('click', () => signOut('Signed out.'));
  $('channels-more').addEventListener('click', () => showChannels(true).catch(error => setStatus(error.message, true)));
  window.addEventListener('hashchange', () => route(false));
  if (credentials()) start().catch(error => signOut('Sign in again: ' + error.message));
  else show('signin');
});
