// mmface4d live preview: draws the newest reconstructed face mesh pushed by the preview server.
//
// The server (mmface4d_stream/preview/server.py) sends binary messages for the topology, meshes and
// camera thumbnails (layout in mmface4d_stream/preview/framing.py) and a JSON status text message
// twice a second. The page keeps only the newest mesh: one that arrives before the previous one was
// drawn replaces it. After drawing, the page acknowledges the meshes it received, which gives the
// server credit to send more; a slow page therefore receives fewer meshes instead of a queue.
import * as THREE from 'three';
import { OrbitControls } from 'three/addons/controls/OrbitControls.js';

// Binary framing: the same numbers as framing.py (tests/preview checks that they agree).
const FRAMING_VERSION = 1;
const MSG_MESH = 1;
const MSG_TOPOLOGY = 2;
const MSG_THUMBNAIL = 3;
const FLAG_SMOOTHED = 1;
const FLAG_LOST = 2;
const MESH_HEADER_BYTES = 20;
const TOPOLOGY_HEADER_BYTES = 16;
const THUMBNAIL_HEADER_BYTES = 12;

const MAX_CAMERAS_SHOWN = 8;
const FPS_WINDOW_MS = 1000;

const stats = {
  connected: false,
  connections: 0,
  meshesReceived: 0,
  meshesDrawn: 0,
  meshesSkipped: 0,
  badFrames: 0,
  lastError: null,
  fps: 0,
  topologies: 0,
  nVertices: 0,
  nFaces: 0,
  lastSeq: 0,
  lastFrame: null,
  lost: false,
  smoothed: false,
  thumbnails: 0,
  statusMessages: 0,
  webgl: false,
  renderer: null,
  drawMs: 0, // exponential average time of taking a mesh in (copy + normals), milliseconds
  renderMs: 0, // exponential average time of one render call, milliseconds
};

const $ = (id) => document.getElementById(id);

// ------------------------------------------------------------------------------------- scene

const canvas = $('view');
// The name of the WebGL implementation, e.g. a GPU's, or SwiftShader / llvmpipe (CPU).
function webglRendererName() {
  const gl = document.createElement('canvas').getContext('webgl2');
  if (!gl) return null;
  const info = gl.getExtension('WEBGL_debug_renderer_info');
  const name = String(gl.getParameter(info ? info.UNMASKED_RENDERER_WEBGL : gl.RENDERER));
  const lose = gl.getExtension('WEBGL_lose_context');
  if (lose) lose.loseContext();
  return name;
}

let renderer = null;
let software = false;
try {
  stats.renderer = webglRendererName();
  // Rasterizing on the CPU, multisampling and high-DPI pixels cost more than they show.
  software = /swiftshader|llvmpipe|softpipe|software/i.test(stats.renderer || '');
  renderer = new THREE.WebGLRenderer({ canvas, antialias: !software });
  renderer.setPixelRatio(software ? 1 : (window.devicePixelRatio || 1));
  stats.webgl = true;
} catch (err) {
  stats.lastError = `WebGL unavailable: ${err.message}`;
}

const scene = new THREE.Scene();
scene.background = new THREE.Color(0x1b1d22);
const camera = new THREE.PerspectiveCamera(30, 1, 0.01, 100);
camera.position.set(0, 0, 1);
const controls = new OrbitControls(camera, canvas);
controls.addEventListener('change', () => { needsRender = true; });

scene.add(new THREE.HemisphereLight(0xf4f1ec, 0x30343c, 1.1));
// A light that follows the viewer, so the side being looked at is always lit.
const headlight = new THREE.DirectionalLight(0xffffff, 1.9);
scene.add(headlight, headlight.target);

// Stream vertices are in the reference camera's frame (x right, y down, z forward); turning the
// group half a turn about x gives three.js's convention (y up, viewer looking down -z).
const faceGroup = new THREE.Group();
faceGroup.rotation.x = Math.PI;
scene.add(faceGroup);
const material = new THREE.MeshStandardMaterial({
  color: 0xd8b6a0, roughness: 0.6, metalness: 0.0, side: THREE.DoubleSide,
});
const faceMesh = new THREE.Mesh(new THREE.BufferGeometry(), material);
faceMesh.visible = false;
faceMesh.frustumCulled = false;
faceGroup.add(faceMesh);

let topology = null; // {key, nVertices, nFaces}
let needsFraming = true;
let needsRender = true;
let pending = null; // newest mesh not drawn yet: {buffer, seq, frame, flags, key, nVertices}
let unacked = 0;
let socket = null;
const drawTimes = [];

function resize() {
  const w = canvas.clientWidth || window.innerWidth;
  const h = canvas.clientHeight || window.innerHeight;
  if (renderer) renderer.setSize(w, h, false);
  camera.aspect = w / Math.max(h, 1);
  camera.updateProjectionMatrix();
  needsRender = true;
}
window.addEventListener('resize', resize);
resize();

function frameView() {
  const geometry = faceMesh.geometry;
  if (!geometry.boundingSphere) geometry.computeBoundingSphere();
  const sphere = geometry.boundingSphere;
  if (!sphere || !Number.isFinite(sphere.radius) || sphere.radius <= 0) return;
  faceGroup.updateMatrixWorld(true);
  const center = faceGroup.localToWorld(sphere.center.clone());
  const distance = (sphere.radius / Math.sin(THREE.MathUtils.degToRad(camera.fov / 2))) * 1.05;
  controls.target.copy(center);
  camera.position.copy(center).add(new THREE.Vector3(0, 0, distance));
  camera.near = distance / 100;
  camera.far = distance * 100;
  camera.updateProjectionMatrix();
  controls.update();
  needsFraming = false;
  needsRender = true;
}
$('reset-view').addEventListener('click', frameView);

// -------------------------------------------------------------------------------- messages

function setTopology(buffer) {
  if (buffer.byteLength < TOPOLOGY_HEADER_BYTES) throw new Error(`topology message of ${buffer.byteLength} bytes`);
  const view = new DataView(buffer);
  const key = view.getUint32(4, true);
  const nVertices = view.getUint32(8, true);
  const nFaces = view.getUint32(12, true);
  if (buffer.byteLength !== TOPOLOGY_HEADER_BYTES + nFaces * 12) {
    throw new Error(`topology message is ${buffer.byteLength} bytes, expected ${TOPOLOGY_HEADER_BYTES + nFaces * 12}`);
  }
  const faces = new Int32Array(buffer, TOPOLOGY_HEADER_BYTES, nFaces * 3);
  const index = new Uint32Array(faces.length);
  for (let i = 0; i < faces.length; i++) {
    const v = faces[i];
    if (v < 0 || v >= nVertices) throw new Error(`topology index ${v} outside [0, ${nVertices})`);
    index[i] = v;
  }
  const geometry = new THREE.BufferGeometry();
  const positions = new THREE.BufferAttribute(new Float32Array(nVertices * 3), 3);
  positions.setUsage(THREE.DynamicDrawUsage);
  geometry.setAttribute('position', positions);
  const normals = new THREE.BufferAttribute(new Float32Array(nVertices * 3), 3);
  normals.setUsage(THREE.DynamicDrawUsage);
  geometry.setAttribute('normal', normals);
  geometry.setIndex(new THREE.BufferAttribute(index, 1));
  faceMesh.geometry.dispose();
  faceMesh.geometry = geometry;
  faceMesh.visible = false;
  const changedSize = !topology || topology.nVertices !== nVertices;
  topology = { key, nVertices, nFaces };
  stats.topologies += 1;
  stats.nVertices = nVertices;
  stats.nFaces = nFaces;
  // Same mesh size after a reconnect: keep the operator's view; a new model gets framed.
  if (changedSize) needsFraming = true;
}

function receiveMesh(buffer) {
  unacked += 1;
  if (buffer.byteLength < MESH_HEADER_BYTES) throw new Error(`mesh message of ${buffer.byteLength} bytes`);
  const view = new DataView(buffer);
  const mesh = {
    buffer,
    flags: view.getUint16(2, true),
    seq: view.getUint32(4, true),
    frame: view.getUint32(8, true),
    nVertices: view.getUint32(12, true),
    key: view.getUint32(16, true),
  };
  if (buffer.byteLength !== MESH_HEADER_BYTES + mesh.nVertices * 12) {
    throw new Error(`mesh message is ${buffer.byteLength} bytes, expected ${MESH_HEADER_BYTES + mesh.nVertices * 12}`);
  }
  stats.meshesReceived += 1;
  if (pending) stats.meshesSkipped += 1;
  pending = mesh;
}

// Area-weighted vertex normals on the flat arrays: several times faster than
// BufferGeometry.computeVertexNormals, which goes through a Vector3 per corner.
function computeVertexNormals(positions, index, normals) {
  normals.fill(0);
  for (let f = 0; f < index.length; f += 3) {
    const a = index[f] * 3;
    const b = index[f + 1] * 3;
    const c = index[f + 2] * 3;
    const ux = positions[b] - positions[a];
    const uy = positions[b + 1] - positions[a + 1];
    const uz = positions[b + 2] - positions[a + 2];
    const vx = positions[c] - positions[a];
    const vy = positions[c + 1] - positions[a + 1];
    const vz = positions[c + 2] - positions[a + 2];
    const nx = uy * vz - uz * vy;
    const ny = uz * vx - ux * vz;
    const nz = ux * vy - uy * vx;
    normals[a] += nx; normals[a + 1] += ny; normals[a + 2] += nz;
    normals[b] += nx; normals[b + 1] += ny; normals[b + 2] += nz;
    normals[c] += nx; normals[c + 1] += ny; normals[c + 2] += nz;
  }
  for (let i = 0; i < normals.length; i += 3) {
    const length = Math.hypot(normals[i], normals[i + 1], normals[i + 2]);
    if (length > 0) {
      normals[i] /= length; normals[i + 1] /= length; normals[i + 2] /= length;
    }
  }
}

function drawMesh(mesh) {
  if (!topology || mesh.key !== topology.key || mesh.nVertices !== topology.nVertices) {
    stats.meshesSkipped += 1;
    return;
  }
  const source = new Float32Array(mesh.buffer, MESH_HEADER_BYTES, mesh.nVertices * 3);
  for (let i = 0; i < source.length; i++) {
    if (!Number.isFinite(source[i])) throw new Error('mesh has non-finite vertex coordinates');
  }
  const geometry = faceMesh.geometry;
  const positions = geometry.getAttribute('position');
  positions.array.set(source);
  positions.needsUpdate = true;
  const normals = geometry.getAttribute('normal');
  computeVertexNormals(positions.array, geometry.index.array, normals.array);
  normals.needsUpdate = true;
  geometry.computeBoundingSphere();
  faceMesh.visible = true;
  if (needsFraming) frameView();
  if (stats.lastSeq && mesh.seq > stats.lastSeq + 1) stats.meshesSkipped += mesh.seq - stats.lastSeq - 1;
  stats.lastSeq = mesh.seq;
  stats.lastFrame = mesh.frame;
  stats.lost = (mesh.flags & FLAG_LOST) !== 0;
  stats.smoothed = (mesh.flags & FLAG_SMOOTHED) !== 0;
  stats.meshesDrawn += 1;
  drawTimes.push(performance.now());
  needsRender = true;
}

function showThumbnail(buffer) {
  if (buffer.byteLength < THUMBNAIL_HEADER_BYTES) throw new Error(`thumbnail message of ${buffer.byteLength} bytes`);
  const view = new DataView(buffer);
  const nameBytes = view.getUint16(2, true);
  const jpegBytes = view.getUint32(8, true);
  const start = THUMBNAIL_HEADER_BYTES + nameBytes + ((4 - (nameBytes % 4)) % 4);
  if (buffer.byteLength !== start + jpegBytes) {
    throw new Error(`thumbnail message is ${buffer.byteLength} bytes, expected ${start + jpegBytes}`);
  }
  const name = new TextDecoder('utf-8', { fatal: true }).decode(new Uint8Array(buffer, THUMBNAIL_HEADER_BYTES, nameBytes));
  const box = $('thumbnails');
  let figure = Array.from(box.children).find((f) => f.dataset.camera === name);
  if (!figure) {
    if (box.children.length >= MAX_CAMERAS_SHOWN) throw new Error(`more than ${MAX_CAMERAS_SHOWN} cameras`);
    figure = document.createElement('figure');
    figure.dataset.camera = name;
    figure.appendChild(document.createElement('img'));
    const caption = document.createElement('figcaption');
    caption.textContent = `camera ${name}`;
    figure.appendChild(caption);
    box.appendChild(figure);
  }
  const img = figure.querySelector('img');
  const url = URL.createObjectURL(new Blob([new Uint8Array(buffer, start, jpegBytes)], { type: 'image/jpeg' }));
  const old = img.dataset.url;
  img.alt = `camera ${name}`;
  img.src = url;
  img.dataset.url = url;
  if (old) URL.revokeObjectURL(old);
  stats.thumbnails += 1;
}

function handleBinary(buffer) {
  if (buffer.byteLength < 2) throw new Error(`binary message of ${buffer.byteLength} bytes`);
  const bytes = new Uint8Array(buffer, 0, 2);
  if (bytes[1] !== FRAMING_VERSION) {
    if (bytes[0] === MSG_MESH) unacked += 1;
    throw new Error(`framing version ${bytes[1]}, expected ${FRAMING_VERSION}`);
  }
  if (bytes[0] === MSG_MESH) receiveMesh(buffer);
  else if (bytes[0] === MSG_TOPOLOGY) setTopology(buffer);
  else if (bytes[0] === MSG_THUMBNAIL) showThumbnail(buffer);
  else throw new Error(`unknown binary message type ${bytes[0]}`);
}

// One entry point for everything the socket delivers; a malformed message is counted and skipped.
function handleMessage(data) {
  try {
    if (typeof data === 'string') showStatus(data);
    else if (data instanceof ArrayBuffer) handleBinary(data);
    else throw new Error(`unexpected message of type ${typeof data}`);
  } catch (err) {
    stats.badFrames += 1;
    stats.lastError = String(err && err.message ? err.message : err);
    console.warn('mmface4d preview: skipped a malformed message:', stats.lastError);
    // A bad mesh still used the server's credit: give it back if nothing is waiting to be drawn.
    if (!pending) acknowledge();
  }
}

function acknowledge() {
  if (unacked > 0 && socket && socket.readyState === WebSocket.OPEN) {
    socket.send(JSON.stringify({ type: 'ack', n: unacked }));
  }
  unacked = 0;
}

// ---------------------------------------------------------------------------------- status

const fmt = (value, digits = 1, unit = '') => (
  typeof value === 'number' && Number.isFinite(value) ? `${value.toFixed(digits)}${unit}` : '–'
);

function setBanner(text, level) {
  const banner = $('banner');
  banner.textContent = text || '';
  banner.className = text ? `banner ${level === 'warn' ? 'warn' : ''}` : 'banner hidden';
}

function showStatus(text) {
  const message = JSON.parse(text);
  if (!message || typeof message !== 'object' || message.type !== 'status' || typeof message.stream !== 'object' || !message.stream) {
    throw new Error('text message is not a status report');
  }
  stats.statusMessages += 1;
  window.mmfPreview.lastStatus = message;
  const s = message.stream;
  const state = String(s.state);
  const connection = $('connection');
  connection.textContent = `${String(s.url)} · ${state}`;
  connection.className = state === 'streaming' ? 'ok' : (state === 'ended' || state === 'waiting' ? 'warn' : 'bad');
  $('fps-stream').textContent = `${fmt(s.rate_fps)} fps received`;
  $('latency').textContent = `${fmt(s.latency_ms, 0, ' ms')} capture → preview`;
  const stages = s.stages && typeof s.stages === 'object' ? s.stages : {};
  let pipelineDrops = 0;
  for (const stage of Object.values(stages)) pipelineDrops += Number(stage && stage.drops) || 0;
  $('drops').textContent = `pipeline ${pipelineDrops} · network ${Number(s.dropped) || 0} · not drawn ${stats.meshesSkipped}`
    + (s.rejected ? ` · rejected ${s.rejected}` : '');
  const mesh = s.mesh && typeof s.mesh === 'object' ? s.mesh : {};
  const cameras = Array.isArray(mesh.cameras) ? mesh.cameras.map(String).join(', ') : '';
  $('frame').textContent = mesh.frame === undefined ? '–' : `${mesh.frame}${cameras ? ` (cameras ${cameras})` : ''}${mesh.smoothed ? ' smoothed' : ''}`;
  const fit = mesh.fit && typeof mesh.fit === 'object' ? mesh.fit : {};
  const fitText = Object.entries(fit).filter(([key, value]) => key !== 'lost' && value !== '' && value !== null)
    .slice(0, 6).map(([key, value]) => `${key} ${Number.isInteger(value) ? value : (typeof value === 'number' ? fmt(value, 2) : String(value))}`);
  $('fit').textContent = fitText.length ? fitText.join(' · ') : '–';
  const topo = s.topology;
  $('topology').textContent = topo ? `${topo.n_vertices} vertices · ${topo.n_faces} triangles` : '–';
  const budget = s.budget && typeof s.budget === 'object' ? s.budget : null;
  $('budget').textContent = budgetText(budget, s.graph_state);
  $('budget').className = budget && budget.over ? 'bad' : (budget ? 'ok' : '');
  renderStages(stages, budget);
  const notes = [];
  if (s.rejected) notes.push(`last rejected message: ${String(s.last_error)}`);
  if (s.waiting_for_topology) notes.push('waiting for the mesh topology');
  if (stats.badFrames) notes.push(`${stats.badFrames} malformed preview messages skipped`);
  $('notes').textContent = notes.join(' · ');

  if (!stats.connected) setBanner('preview server unreachable — retrying', 'bad');
  else if (state === 'waiting') setBanner(`waiting for the mesh stream at ${String(s.url)}`, 'warn');
  else if (s.graph_state === 'ready' && !s.meshes) setBanner('graph ready — waiting for the first frame', 'warn');
  else if (state === 'stalled') setBanner(`no data for ${fmt(s.age_s, 0)} s — is the capture running?`, 'bad');
  else if (state === 'ended') setBanner(`stream ended (${String(s.end_reason)})`, 'warn');
  else if (mesh.lost) setBanner('FACE LOST — the subject is out of view', 'bad');
  else if (budget && budget.over) setBanner(`latency over budget: ${String(budget.over)} is over it`, 'warn');
  else setBanner('', null);
}

// The live latency budget (the publisher's status): capture → publish p95 against the budget,
// the stage over it, drops by cause, frames the fitter hurried.
function budgetText(budget, graphState) {
  if (!budget) return graphState ? String(graphState) : '–';
  const e2e = budget.capture_to_publish_ms || {};
  const drops = budget.drops && typeof budget.drops === 'object' ? budget.drops : {};
  const dropText = Object.entries(drops).filter(([, n]) => Number(n) > 0).map(([cause, n]) => `${cause.replace('_', ' ')} ${Number(n)}`);
  return `${fmt(e2e.p95, 0, ' ms')} p95 of ${fmt(budget.max_latency_ms, 0, ' ms')}`
    + (budget.over ? ` · over: ${String(budget.over)}` : ' · within')
    + (dropText.length ? ` · dropped: ${dropText.join(', ')}` : '')
    + (Number(budget.hurried) > 0 ? ` · hurried ${Number(budget.hurried)}` : '');
}

function renderStages(stages, budget) {
  const table = $('stages');
  table.replaceChildren();
  const timed = budget && budget.stages && typeof budget.stages === 'object' ? budget.stages : {};
  const names = [...new Set([...Object.keys(timed), ...Object.keys(stages)])];
  if (!names.length) return;
  const head = table.insertRow();
  for (const label of ['stage', 'fps', 'latency', 'p50 / p95', 'drops']) {
    const th = document.createElement('th');
    th.textContent = label;
    head.appendChild(th);
  }
  for (const name of names.slice(0, 16)) {
    const stage = stages[name] || {};
    const p = timed[name] || {};
    const row = table.insertRow();
    if (budget && budget.over === name) row.className = 'over';
    const percentiles = p.p50 === undefined ? '–' : `${fmt(p.p50, 0)} / ${fmt(p.p95, 0, ' ms')}`;
    for (const text of [name, stage.fps === undefined ? '–' : fmt(stage.fps), stage.latency_ms === undefined ? '–' : fmt(stage.latency_ms, 0, ' ms'),
      percentiles, stage.drops === undefined ? '–' : String(Number(stage.drops) || 0)]) {
      row.insertCell().textContent = text;
    }
  }
}

function updateFps() {
  const now = performance.now();
  while (drawTimes.length && drawTimes[0] < now - FPS_WINDOW_MS) drawTimes.shift();
  stats.fps = drawTimes.length * (1000 / FPS_WINDOW_MS);
  // Say so when the browser draws on the CPU: that, not the stream, then limits the rate.
  $('fps-drawn').textContent = `${fmt(stats.fps)} fps${software ? ' (software WebGL)' : ''}`;
}
setInterval(updateFps, 250);

// ------------------------------------------------------------------------------- main loop

const average = (mean, sample) => (mean ? 0.9 * mean + 0.1 * sample : sample);

function animate() {
  requestAnimationFrame(animate);
  if (pending) {
    const mesh = pending;
    pending = null;
    try {
      const t0 = performance.now();
      drawMesh(mesh);
      stats.drawMs = average(stats.drawMs, performance.now() - t0);
    } catch (err) {
      stats.badFrames += 1;
      stats.lastError = String(err.message || err);
      console.warn('mmface4d preview: could not draw a mesh:', stats.lastError);
    }
    acknowledge();
  }
  if (needsRender && renderer) {
    headlight.position.copy(camera.position).addScaledVector(camera.up, 0.3 * camera.position.distanceTo(controls.target));
    headlight.target.position.copy(controls.target);
    const t0 = performance.now();
    renderer.render(scene, camera);
    stats.renderMs = average(stats.renderMs, performance.now() - t0);
    needsRender = false;
  }
}
requestAnimationFrame(animate);

// ------------------------------------------------------------------------------- websocket

let retryMs = 500;

function connect() {
  const protocol = window.location.protocol === 'https:' ? 'wss:' : 'ws:';
  const ws = new WebSocket(`${protocol}//${window.location.host}/ws${window.location.search}`);
  ws.binaryType = 'arraybuffer';
  socket = ws;
  ws.onopen = () => {
    stats.connected = true;
    stats.connections += 1;
    retryMs = 500;
    unacked = 0;
    pending = null;
  };
  ws.onmessage = (event) => handleMessage(event.data);
  ws.onclose = () => {
    if (socket !== ws) return;
    stats.connected = false;
    setBanner('preview server unreachable — retrying', 'bad');
    $('connection').textContent = 'disconnected from the preview server';
    $('connection').className = 'bad';
    setTimeout(connect, retryMs);
    retryMs = Math.min(retryMs * 2, 4000);
  };
}

window.mmfPreview = {
  stats, handleMessage, frameView, lastStatus: null,
  view: () => ({ position: camera.position.toArray(), target: controls.target.toArray() }),
};
if (!renderer) setBanner('this browser cannot draw WebGL: the preview needs it', 'bad');
connect();
