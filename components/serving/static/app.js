// The search page's behaviour: build a query (text, image, +/- text modifiers), POST it to v1/search,
// render the hits. Plain DOM APIs, no framework, no inline code, so the page runs under a strict CSP.
// Every URL is relative to the page, so the app can sit behind a route prefix.
"use strict";

(() => {
  const MODIFIER_WEIGHT = 2.0; // ALIGN's image+text arithmetic: +2 adds the text, -2 subtracts it

  const $ = (id) => document.getElementById(id);
  const els = {
    form: $("search-form"),
    query: $("query"),
    k: $("k"),
    search: $("search"),
    imageInput: $("image-input"),
    dropZone: $("drop-zone"),
    dropEmpty: document.querySelector("#drop-zone .drop-empty"),
    dropFilled: document.querySelector("#drop-zone .drop-filled"),
    preview: $("image-preview"),
    imageName: $("image-name"),
    clearImage: $("clear-image"),
    modifiers: $("modifiers"),
    addPlus: $("add-plus"),
    addMinus: $("add-minus"),
    results: $("results"),
    modelVersion: $("model-version"),
    error: $("error"),
    status: $("status"),
    modifierTemplate: $("modifier-template"),
    resultTemplate: $("result-template"),
  };

  // The query image: its base64 (what the API wants) and a blob: URL for the preview.
  let image = null; // {base64, previewUrl, name}
  // Only the latest search may paint results; an older, slower answer is dropped.
  let inFlight = null; // AbortController of the search in progress

  const apiUrl = (path) => new URL(path, document.baseURI).href;

  // ---- messages -------------------------------------------------------------------------------

  function showError(message) {
    els.error.textContent = message;
    els.error.hidden = false;
  }

  function clearError() {
    els.error.textContent = "";
    els.error.hidden = true;
  }

  function setStatus(text) {
    els.status.textContent = text;
  }

  // FastAPI answers {"detail": "..."} or {"detail": [{"loc": [...], "msg": "..."}]}; anything else
  // (a proxy's HTML page, an empty body) still becomes a readable sentence.
  async function errorMessage(response) {
    let detail = null;
    try {
      detail = (await response.json()).detail;
    } catch (_) {
      /* not JSON */
    }
    if (typeof detail === "string" && detail) return detail;
    if (Array.isArray(detail) && detail.length) {
      return detail
        .map((item) => {
          const loc = Array.isArray(item.loc) ? item.loc.filter((part) => part !== "body").join(".") : "";
          const msg = item.msg || JSON.stringify(item);
          return loc ? `${loc}: ${msg}` : msg;
        })
        .join("; ");
    }
    return `The server answered ${response.status} ${response.statusText}`.trim();
  }

  // ---- model version --------------------------------------------------------------------------

  const asVersion = (v) => (/^v/i.test(String(v)) ? String(v) : `v${v}`);

  function showModel(info) {
    let text = `${info.model_name} ${asVersion(info.model_version)}`;
    if (info.index_version !== undefined && info.index_version !== null) {
      text += ` · index ${asVersion(info.index_version)}`;
    }
    els.modelVersion.textContent = text;
    if (Number.isFinite(info.items)) {
      els.modelVersion.title = `${info.items} images indexed` + (info.dim ? `, ${info.dim}-d embeddings` : "");
    }
  }

  async function loadModel() {
    try {
      const response = await fetch(apiUrl("v1/model"), { headers: { Accept: "application/json" } });
      if (!response.ok) throw new Error(await errorMessage(response));
      showModel(await response.json());
    } catch (err) {
      els.modelVersion.textContent = "model unavailable";
      showError(`Could not load the model information: ${err.message}`);
    }
  }

  // ---- query image ----------------------------------------------------------------------------

  function readBase64(file) {
    return new Promise((resolve, reject) => {
      const reader = new FileReader();
      reader.onload = () => resolve(String(reader.result).replace(/^data:[^,]*,/, ""));
      reader.onerror = () => reject(reader.error || new Error("could not read the file"));
      reader.readAsDataURL(file);
    });
  }

  async function setImage(file) {
    if (!file) return;
    if (file.type && !file.type.startsWith("image/")) {
      showError(`“${file.name}” is not an image.`);
      return;
    }
    try {
      const base64 = await readBase64(file);
      clearImage();
      image = { base64, previewUrl: URL.createObjectURL(file), name: file.name };
      els.preview.src = image.previewUrl;
      els.imageName.textContent = file.name;
      els.dropEmpty.hidden = true;
      els.dropFilled.hidden = false;
      els.dropZone.classList.add("has-image");
      clearError();
    } catch (err) {
      showError(`Could not read “${file.name}”: ${err.message}`);
    }
  }

  function clearImage() {
    if (image) URL.revokeObjectURL(image.previewUrl);
    image = null;
    els.preview.removeAttribute("src");
    els.imageName.textContent = "";
    els.imageInput.value = ""; // choosing the same file again must fire "change"
    els.dropEmpty.hidden = false;
    els.dropFilled.hidden = true;
    els.dropZone.classList.remove("has-image");
  }

  function wireDropZone() {
    els.imageInput.addEventListener("change", () => setImage(els.imageInput.files[0]));
    els.clearImage.addEventListener("click", () => {
      clearImage();
      els.query.focus();
    });
    // dragenter/dragover must be cancelled or the browser opens the dropped file instead.
    let depth = 0; // children fire their own enter/leave; count them so the highlight doesn't flicker
    els.dropZone.addEventListener("dragenter", (event) => {
      event.preventDefault();
      depth += 1;
      els.dropZone.classList.add("drag-over");
    });
    els.dropZone.addEventListener("dragover", (event) => {
      event.preventDefault();
      event.dataTransfer.dropEffect = "copy";
    });
    els.dropZone.addEventListener("dragleave", () => {
      depth = Math.max(0, depth - 1);
      if (depth === 0) els.dropZone.classList.remove("drag-over");
    });
    els.dropZone.addEventListener("drop", (event) => {
      event.preventDefault();
      depth = 0;
      els.dropZone.classList.remove("drag-over");
      const files = event.dataTransfer && event.dataTransfer.files;
      if (files && files.length) setImage(files[0]);
    });
  }

  // ---- modifiers ------------------------------------------------------------------------------

  function addModifier(sign) {
    const row = els.modifierTemplate.content.firstElementChild.cloneNode(true);
    const weight = sign > 0 ? MODIFIER_WEIGHT : -MODIFIER_WEIGHT;
    row.dataset.weight = String(weight);
    row.classList.add(sign > 0 ? "plus" : "minus");
    row.querySelector(".modifier-sign").textContent = sign > 0 ? "+" : "−";
    const input = row.querySelector(".modifier-text");
    input.placeholder = sign > 0 ? "add, e.g. “red”" : "subtract, e.g. “blue”";
    input.setAttribute("aria-label", sign > 0 ? "Text to add" : "Text to subtract");
    const remove = row.querySelector(".modifier-remove");
    remove.setAttribute("aria-label", sign > 0 ? "Remove added text" : "Remove subtracted text");
    remove.addEventListener("click", () => {
      row.remove();
      els.query.focus();
    });
    els.modifiers.appendChild(row);
    input.focus();
  }

  function currentModifiers() {
    return Array.from(els.modifiers.querySelectorAll(".modifier"))
      .map((row) => ({ text: row.querySelector(".modifier-text").value.trim(), weight: Number(row.dataset.weight) }))
      .filter((modifier) => modifier.text);
  }

  // ---- search ---------------------------------------------------------------------------------

  function buildRequest() {
    const text = els.query.value.trim();
    if (!text && !image) throw new Error("Type a query or choose an image to search with.");
    const k = Number(els.k.value);
    if (!Number.isInteger(k) || k < 1) throw new Error("“Results” must be a whole number of at least 1.");
    const body = { k };
    if (text) body.text = text;
    if (image) body.image = image.base64;
    // Without an image the server applies the modifiers to the text query.
    const modifiers = currentModifiers();
    if (modifiers.length) body.modifiers = modifiers;
    return body;
  }

  function renderResults(results) {
    const cards = results.map((hit, i) => {
      const card = els.resultTemplate.content.firstElementChild.cloneNode(true);
      card.dataset.id = hit.id;
      const img = card.querySelector(".result-image");
      img.alt = hit.caption || hit.id;
      img.loading = i < 24 ? "eager" : "lazy";
      img.addEventListener("error", () => card.classList.add("broken"), { once: true });
      img.src = apiUrl(hit.image_url);
      card.querySelector(".result-caption").textContent = hit.caption || hit.id;
      card.querySelector(".result-rank").textContent = `#${hit.rank ?? i + 1}`;
      const score = card.querySelector(".result-score");
      score.textContent = Number(hit.score).toFixed(3);
      score.title = "similarity score";
      return card;
    });
    els.results.replaceChildren(...cards);
  }

  async function search() {
    clearError();
    let body;
    try {
      body = buildRequest();
    } catch (err) {
      showError(err.message);
      return;
    }
    if (inFlight) inFlight.abort();
    const controller = new AbortController();
    inFlight = controller;
    els.search.disabled = true;
    document.body.classList.add("busy");
    setStatus("Searching…");
    const started = performance.now();
    try {
      const response = await fetch(apiUrl("v1/search"), {
        method: "POST",
        headers: { "Content-Type": "application/json", Accept: "application/json" },
        body: JSON.stringify(body),
        signal: controller.signal,
      });
      if (!response.ok) throw new Error(await errorMessage(response));
      const answer = await response.json();
      if (controller !== inFlight) return;
      const ms = Math.round(performance.now() - started);
      const results = Array.isArray(answer.results) ? answer.results : [];
      renderResults(results);
      showModel(answer);
      const n = results.length;
      setStatus(n ? `${n} result${n === 1 ? "" : "s"} in ${ms} ms` : `No results (${ms} ms)`);
    } catch (err) {
      if (err.name === "AbortError" || controller !== inFlight) return;
      els.results.replaceChildren();
      setStatus("");
      const reason = err instanceof TypeError ? `Could not reach the search service (${err.message})` : err.message;
      showError(reason);
    } finally {
      if (controller === inFlight) {
        inFlight = null;
        els.search.disabled = false;
        document.body.classList.remove("busy");
      }
    }
  }

  // ---- start ----------------------------------------------------------------------------------

  function start() {
    els.form.addEventListener("submit", (event) => {
      event.preventDefault(); // Enter in any field lands here too
      search();
    });
    els.addPlus.addEventListener("click", () => addModifier(+1));
    els.addMinus.addEventListener("click", () => addModifier(-1));
    wireDropZone();
    loadModel();
  }

  start();
})();
