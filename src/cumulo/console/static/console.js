// cumulo console: the playground's streamed panels and the copy buttons.
// Text from models is only ever inserted with textContent, never as HTML.
"use strict";

function panelFor(model) {
  const tpl = document.getElementById("panel-template");
  const panel = tpl.content.firstElementChild.cloneNode(true);
  panel.dataset.model = model;
  panel.querySelector(".panel-model").textContent = model;
  return panel;
}

function fmtMs(v) { return v === null || v === undefined ? "" : Math.round(v).toLocaleString("en") + " ms"; }
function fmtUsd(v) {
  if (v === null || v === undefined) return "unknown";
  if (v === 0) return "$0";
  if (Math.abs(v) < 0.01) return "$" + v.toFixed(6);
  return Math.abs(v) < 1 ? "$" + v.toFixed(4) : "$" + v.toFixed(2);
}

async function streamPanel(form, model, panel, outputs) {
  const data = new URLSearchParams(new FormData(form));
  data.delete("model");
  data.append("model", model);
  const reply = panel.querySelector(".reply");
  const fail = (message) => {
    const p = panel.querySelector(".panel-error");
    p.textContent = message;
    p.hidden = false;
  };
  let resp;
  try {
    resp = await fetch(form.dataset.stream, {
      method: "POST", body: data, credentials: "same-origin",
      headers: { "X-CSRF-Token": data.get("csrf") },
    });
  } catch (err) { fail("The request failed: " + err); return; }
  if (!resp.ok) {
    const text = await resp.text();
    const doc = new DOMParser().parseFromString(text, "text/html");
    const msg = doc.querySelector(".error");
    fail(msg ? msg.textContent : "Error " + resp.status);
    return;
  }
  const reader = resp.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  outputs[model] = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const frame = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      let event = "message", payload = "";
      for (const line of frame.split("\n")) {
        if (line.startsWith("event: ")) event = line.slice(7);
        else if (line.startsWith("data: ")) payload += line.slice(6);
      }
      const msg = JSON.parse(payload);
      if (event === "delta") {
        reply.textContent += msg.text;
        outputs[model] += msg.text;
      } else if (event === "error") {
        fail(msg.message);
      } else if (event === "done") {
        const figs = panel.querySelector(".figures");
        figs.querySelector(".latency").textContent = fmtMs(msg.latency_ms);
        figs.querySelector(".ttft").textContent = fmtMs(msg.ttft_ms);
        figs.querySelector(".tokens").textContent = msg.prompt_tokens + " / " + msg.completion_tokens;
        figs.querySelector(".cost").textContent = fmtUsd(msg.cost_usd);
        figs.hidden = false;
      }
    }
  }
}

function addTurn(role, text) {
  const transcript = document.getElementById("transcript");
  const item = document.createElement("li");
  const who = document.createElement("strong");
  who.textContent = role === "user" ? "You: " : "Model: ";
  const said = document.createElement("span");
  said.textContent = text;
  item.append(who, said);
  transcript.appendChild(item);
  transcript.hidden = false;
}

function setupPlayground() {
  const form = document.getElementById("playground");
  if (!form) return;
  // One model is a chat: its earlier turns go back with each prompt. Two or three compare.
  let history = [];
  const historyField = document.getElementById("history");
  const newChat = document.getElementById("new-chat");
  newChat.addEventListener("click", () => {
    history = [];
    historyField.value = "";
    document.getElementById("transcript").replaceChildren();
    document.getElementById("transcript").hidden = true;
    newChat.hidden = true;
  });
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const models = Array.from(form.querySelectorAll("select[name=model]"))
      .map((s) => s.value).filter((v) => v);
    if (models.length !== 1) { history = []; }
    historyField.value = history.length ? JSON.stringify(history) : "";
    const prompt = form.querySelector("#prompt").value;
    const panels = document.getElementById("panels");
    panels.replaceChildren();
    const save = document.getElementById("save");
    save.hidden = true;
    document.getElementById("saved").replaceChildren();
    const outputs = {};
    const button = document.getElementById("send");
    button.disabled = true;
    try {
      await Promise.all(models.map((m) => {
        const panel = panelFor(m);
        panels.appendChild(panel);
        return streamPanel(form, m, panel, outputs);
      }));
    } finally { button.disabled = false; }
    if (models.length === 1 && outputs[models[0]] !== undefined) {
      addTurn("user", prompt);
      addTurn("assistant", outputs[models[0]]);
      history.push({ role: "user", content: prompt }, { role: "assistant", content: outputs[models[0]] });
      newChat.hidden = false;
      form.querySelector("#prompt").value = "";
    }
    save.querySelector("input[name=prompt]").value = prompt;
    save.querySelector("input[name=system]").value = form.querySelector("#system").value;
    save.querySelector("input[name=outputs]").value = JSON.stringify(outputs);
    save.hidden = Object.keys(outputs).length === 0;
  });
}

function setupCopy() {
  for (const button of document.querySelectorAll("button[data-copy]")) {
    button.addEventListener("click", async () => {
      const input = document.getElementById(button.dataset.copy);
      input.select();
      try { await navigator.clipboard.writeText(input.value); button.textContent = "Copied"; }
      catch (err) { document.execCommand("copy"); button.textContent = "Copied"; }
    });
  }
}

document.addEventListener("DOMContentLoaded", () => { setupPlayground(); setupCopy(); });
