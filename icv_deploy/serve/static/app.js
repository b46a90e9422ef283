// The page's only script: send the form to POST /v1/infer with pictures=true and show each result.
"use strict";

const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, children = []) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
  for (const child of children) node.append(child);
  return node;
}

function summary(r) {
  const what = r.task + (r.category ? " of " + r.category : "");
  if (r.task === "segmentation") return `${what}: ${(100 * r.mask_fraction).toFixed(1)} % of the image`;
  if (r.task === "detection") return `${what}: ${r.boxes.length} box(es)`;
  if (r.task === "depth") return `${what}: ${r.depth_m.min.toFixed(2)} to ${r.depth_m.max.toFixed(2)} m`;
  return `${what}: ${r.present ? "yes" : "no"} (score ${r.score.toFixed(2)})`;
}

function showResult(r) {
  const figures = Object.entries(r.pictures || {}).map(([name, png]) =>
    el("figure", {}, [el("img", {src: "data:image/png;base64," + png, alt: name, class: name}),
                      el("figcaption", {}, [name])]));
  const details = {...r};
  delete details.pictures;
  const card = el("section", {class: "result"}, [
    el("h2", {}, [r.instruction]),
    el("p", {class: "summary"}, [summary(r)]),
    el("div", {class: "pictures"}, figures),
    el("pre", {}, [JSON.stringify(details, null, 1)]),
  ]);
  if (r.random_weights) card.prepend(el("p", {class: "warning"}, ["This model has random weights: its answers mean nothing."]));
  $("results").append(card);
}

async function run(event) {
  event.preventDefault();
  const status = $("status");
  const form = new FormData();
  form.append("image", $("image").files[0]);
  for (const line of $("instructions").value.split("\n")) if (line.trim()) form.append("instruction", line.trim());
  for (const name of ["steps", "seed", "resolution"]) if ($(name).value.trim()) form.append(name, $(name).value.trim());
  form.append("pictures", "true");
  const headers = $("key").value ? {Authorization: "Bearer " + $("key").value} : {};
  status.className = "";
  status.textContent = "running...";
  $("run").disabled = true;
  try {
    const response = await fetch("v1/infer", {method: "POST", body: form, headers});
    const body = await response.json();
    if (!response.ok) throw new Error(`${response.status}: ${body.error}`);
    $("results").replaceChildren();
    body.results.forEach(showResult);
    status.textContent = `done in ${(body.timings_ms.total / 1000).toFixed(2)} s (batch of ${body.batch_size})`;
  } catch (error) {
    status.className = "error";
    status.textContent = String(error.message || error);
  } finally {
    $("run").disabled = false;
  }
}

$("ask").addEventListener("submit", run);
