// Drives ComfyUI's real frontend in headless Chromium for tests/test_browser.py (which makes the checks).
//
//   node drive.mjs CONFIG.json REPORT.json
//
// CONFIG: {"url": server, "chromium": path, "screenshots": folder, "workflows": [{"path": UI workflow,
//          "set": {node type: {widget: value}}, "run": bool, "timeout_s": n}]}
// For each workflow: open a fresh page, drop the file on the canvas (a DragEvent holding a File, as a
// user's drop), report every node as the page sees it (type, registered or not, widget names and
// values, serialized widgets_values, bounding box) and the page's own node templates
// (LiteGraph.createNode(type).serialize()), then set the given widgets and report graphToPrompt().
// With "run", click the Run button and wait until the server's history holds the prompt's result.
// Screenshots: <name>-loaded.png, <name>-set.png, <name>-done.png (and <name>-done.jpg).
import fs from 'node:fs';
import path from 'node:path';
import { chromium } from 'playwright-core';

const [configPath, reportPath] = process.argv.slice(2);
const config = JSON.parse(fs.readFileSync(configPath, 'utf8'));
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function getJson(route) {
  const response = await fetch(config.url + route);
  return response.json();
}

async function closeDialogs(page) {
  // A fresh user gets the template browser on first load; a drop under an open dialog still works,
  // but the dialog would cover the Run button.
  for (let i = 0; i < 5; i++) {
    const open = await page.locator('.p-dialog-mask').count();
    if (!open) return;
    await page.keyboard.press('Escape');
    await sleep(300);
  }
}

async function openPage(browser, log) {
  const page = await browser.newPage({ viewport: { width: 2560, height: 1440 } });
  page.on('console', (m) => { if (m.type() === 'error') log.push(m.text()); });
  page.on('pageerror', (e) => log.push(String(e)));
  await page.goto(config.url + '/');
  await page.waitForFunction(() => window.app && window.app.graph && window.LiteGraph
    && Object.keys(window.LiteGraph.registered_node_types).length > 0, null, { timeout: 120000 });
  await sleep(1000);
  await closeDialogs(page);
  return page;
}

async function dropWorkflow(page, file) {
  const text = fs.readFileSync(file, 'utf8');
  const before = await page.evaluate(() => window.app.graph.nodes.length);
  await page.evaluate(({ text, name }) => {
    const data = new DataTransfer();
    data.items.add(new File([text], name, { type: 'application/json' }));
    const canvas = document.querySelector('canvas#graph-canvas') || document.querySelector('canvas');
    canvas.dispatchEvent(new DragEvent('drop', { dataTransfer: data, bubbles: true, cancelable: true }));
  }, { text, name: path.basename(file) });
  const expected = JSON.parse(text).nodes.length;
  await page.waitForFunction((n) => window.app.graph.nodes.length === n, expected, { timeout: 30000 })
    .catch(() => {});
  await sleep(1500); // previews (the video widget) resize their nodes after load
  return before;
}

function describeGraph(page) {
  return page.evaluate(() => {
    const app = window.app;
    app.graph.setDirtyCanvas(true, true);
    const nodes = app.graph.nodes.map((node) => {
      const box = node.getBounding ? Array.from(node.getBounding()) : [...node.pos, ...node.size];
      return {
        id: node.id,
        type: node.type,
        registered: Boolean(window.LiteGraph.registered_node_types[node.type]),
        has_errors: Boolean(node.has_errors),
        widgets: (node.widgets || []).map((w) => ({ name: w.name, type: w.type, value: w.value,
                                                   serialize: w.options?.serialize !== false && w.serialize !== false })),
        widgets_values: node.serialize().widgets_values ?? [],
        bounding: box,
      };
    });
    const templates = {};
    for (const type of new Set(app.graph.nodes.map((n) => n.type))) {
      if (!window.LiteGraph.registered_node_types[type]) continue;
      const node = window.LiteGraph.createNode(type);
      templates[type] = { widgets_values: node.serialize().widgets_values ?? [],
                          widgets: (node.widgets || []).map((w) => w.name) };
    }
    return { nodes, templates };
  });
}

async function setWidgets(page, settings) {
  return page.evaluate((settings) => {
    const missing = [];
    for (const [type, values] of Object.entries(settings)) {
      const nodes = window.app.graph.nodes.filter((n) => n.type === type);
      if (!nodes.length) continue;
      for (const [name, value] of Object.entries(values)) {
        const widgets = nodes.map((n) => (n.widgets || []).find((w) => w.name === name)).filter(Boolean);
        if (!widgets.length) missing.push(`${type}.${name}`);
        for (const widget of widgets) {
          widget.value = value;
          widget.callback?.(value);
        }
      }
    }
    window.app.graph.setDirtyCanvas(true, true);
    return missing;
  }, settings);
}

async function clickRunAndWait(page, timeoutS) {
  const posted = [];
  page.on('response', async (response) => {
    if (response.request().method() === 'POST' && /\/prompt$/.test(new URL(response.url()).pathname)) {
      posted.push({ status: response.status(), body: await response.json().catch(() => null) });
    }
  });
  await closeDialogs(page);
  await page.getByRole('button', { name: 'Run', exact: true }).first().click();
  const deadline = Date.now() + timeoutS * 1000;
  while (!posted.length && Date.now() < deadline) await sleep(200);
  if (!posted.length) return { posted: null, history: null, dialog: await dialogText(page) };
  const promptId = posted[0].body?.prompt_id;
  if (posted[0].status !== 200 || !promptId) return { posted: posted[0], history: null, dialog: await dialogText(page) };
  let entry = null;
  while (Date.now() < deadline) {
    const history = await getJson('/history/' + promptId);
    entry = history[promptId];
    if (entry && entry.status && entry.status.completed !== undefined
        && (entry.status.completed || entry.status.status_str === 'error')) break;
    entry = null;
    await sleep(1000);
  }
  await sleep(1500); // let the page draw the outputs it was sent
  return { posted: posted[0], history: entry, dialog: await dialogText(page) };
}

function dialogText(page) {
  return page.evaluate(() => Array.from(document.querySelectorAll('[role="dialog"], .p-toast-message'))
    .map((e) => e.innerText.trim()).filter(Boolean));
}

async function fitView(page) {
  await page.evaluate(() => {
    const canvas = window.app.canvas;
    if (canvas?.ds && window.app.graph.nodes.length) {
      const boxes = window.app.graph.nodes.map((n) => Array.from(n.getBounding()));
      const x0 = Math.min(...boxes.map((b) => b[0])), y0 = Math.min(...boxes.map((b) => b[1]));
      const x1 = Math.max(...boxes.map((b) => b[0] + b[2])), y1 = Math.max(...boxes.map((b) => b[1] + b[3]));
      canvas.ds.fitToBounds?.([x0, y0, x1 - x0, y1 - y0]);
      canvas.setDirty(true, true);
    }
  });
  await sleep(500);
}

const browser = await chromium.launch({ executablePath: config.chromium, args: ['--no-sandbox'] });
const report = { workflows: [] };
try {
  for (const item of config.workflows) {
    const name = path.basename(item.path, '.json');
    const shot = (suffix) => path.join(config.screenshots, `${name}-${suffix}`);
    const log = [];
    const page = await openPage(browser, log);
    const nodesBefore = await dropWorkflow(page, item.path);
    await fitView(page);
    await page.screenshot({ path: shot('loaded.png') });
    const loaded = await describeGraph(page);
    const promptLoaded = await page.evaluate(async () => (await window.app.graphToPrompt()).output);
    const missing = await setWidgets(page, item.set || {});
    const prompt = await page.evaluate(async () => (await window.app.graphToPrompt()).output);
    await page.screenshot({ path: shot('set.png') });
    const result = { path: item.path, nodes_before_drop: nodesBefore, loaded, prompt_loaded: promptLoaded,
                     missing_widgets: missing, prompt };
    if (item.run) {
      result.run = await clickRunAndWait(page, item.timeout_s || 600);
      await fitView(page);
      await page.screenshot({ path: shot('done.png') });
      await page.screenshot({ path: shot('done.jpg'), type: 'jpeg', quality: 85 });
    }
    result.console_errors = log;
    report.workflows.push(result);
    await page.close();
  }
} finally {
  await browser.close();
  fs.writeFileSync(reportPath, JSON.stringify(report, null, 1));
}
