"""The README's screenshots, taken with headless Chromium from real runs (selenium drives it).

    apt-get install chromium chromium-driver && .venv/bin/pip install selenium   # not project dependencies
    make demo                                                     # the demo sweep, experiment svbench-demo
    .venv/bin/svbench search --preset demo --n-trials 6 --experiment svbench-demo-search
    .venv/bin/python scripts/screenshots.py [--tracking sqlite:///mlflow.db] \
        [--storage runs/search/svbench-search.journal]

It starts `mlflow ui` and optuna-dashboard on free local ports, then writes into docs/img/:

* ``mlflow_compare.png``: the Compare page of the demo sweep's variants, scatter plot of EER against
  training energy;
* ``mlflow_datasets.png``: the experiment's runs table with its Datasets column;
* ``mlflow_val_curves.png``: the metric history of ``val/eer_pct`` (validation EER per epoch) of the variants;
* ``optuna_dashboard.png``: the search study's Pareto front in optuna-dashboard.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

from mlflow.tracking import MlflowClient
from selenium import webdriver
from selenium.webdriver.common.by import By

OUT = Path(__file__).resolve().parents[1] / "docs" / "img"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(argv: list[str], url: str) -> subprocess.Popen:
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(240):
        try:
            urllib.request.urlopen(url, timeout=1)
            return proc
        except OSError:
            time.sleep(0.5)
    proc.terminate()
    raise SystemExit(f"{argv[0]} did not answer at {url}")


def browser() -> webdriver.Chrome:
    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1600,1000",
                "--force-device-scale-factor=1"):
        opts.add_argument(arg)
    return webdriver.Chrome(options=opts, service=webdriver.ChromeService("/usr/bin/chromedriver"))


def pick(driver, label: str, value: str) -> None:
    """In MLflow's scatter-plot settings, choose ``value`` in the select after the text ``label``."""
    box = driver.find_element(By.XPATH, f"//*[normalize-space(text())='{label}']/following::*[@role='combobox'][1]")
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", box)
    box.click()
    time.sleep(1.0)
    option = driver.find_element(By.XPATH, f"//*[@role='option'][normalize-space(.)='{value}']")
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", option)
    time.sleep(0.5)
    option.click()
    time.sleep(1.5)
    if value not in box.text:
        raise SystemExit(f"could not choose {value} for {label}")


def close_assistant(driver) -> None:
    """MLflow 3's assistant side panel takes a third of the page: close it when it is open."""
    for button in driver.find_elements(By.XPATH, "//*[contains(text(), 'Assistant')]/following::button"):
        if (button.get_attribute("aria-label") or "").lower() == "close":
            button.click()
            time.sleep(1)
            return


def mlflow_shots(driver, base: str, experiment: str) -> None:
    client = MlflowClient()
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise SystemExit(f"no experiment {experiment}: run `make demo` first")
    runs = [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("svbench.kind") == "variant"
            and r.info.status == "FINISHED"]
    ids = urllib.parse.quote(json.dumps([r.info.run_id for r in runs]))
    experiments = urllib.parse.quote(json.dumps([exp.experiment_id]))
    driver.get(f"{base}/#/compare-runs?runs={ids}&experiments={experiments}")
    time.sleep(6)
    close_assistant(driver)
    driver.find_element(By.XPATH, "//*[normalize-space(text())='Scatter Plot']").click()
    time.sleep(2)
    pick(driver, "X-axis:", "train/energy_j")
    pick(driver, "Y-axis:", "eer_pct/synth")
    time.sleep(2)
    driver.save_screenshot(str(OUT / "mlflow_compare.png"))
    curve = urllib.parse.quote(json.dumps(["val/eer_pct"]))
    driver.get(f"{base}/#/metric?runs={ids}&metric={urllib.parse.quote(json.dumps('val/eer_pct'))}"
               f"&experiments={experiments}&plot_metric_keys={curve}"
               "&plot_layout={}&x_axis=step&y_axis_scale=linear&line_smoothness=1&show_point=true"
               "&deselected_curves=[]&last_linear_y_axis_range=[]")
    time.sleep(6)
    close_assistant(driver)
    driver.save_screenshot(str(OUT / "mlflow_val_curves.png"))
    driver.get(f"{base}/#/experiments/{exp.experiment_id}/runs")
    time.sleep(6)
    close_assistant(driver)
    for button in driver.find_elements(By.XPATH, "//button[normalize-space(.)='Got it']"):  # first-visit tips
        button.click()
        time.sleep(1)
    for expander in driver.find_elements(By.XPATH, "//*[contains(@data-component-id, 'runnamecellrenderer')]"):
        expander.click()  # the sweep's parent run: show its variants' rows
        time.sleep(3)
    driver.save_screenshot(str(OUT / "mlflow_datasets.png"))


def optuna_shot(driver, base: str) -> None:
    driver.get(f"{base}/dashboard")
    time.sleep(4)
    driver.find_element(By.XPATH, "//a[contains(@href, '/dashboard/studies/')]").click()
    time.sleep(8)
    driver.save_screenshot(str(OUT / "optuna_dashboard.png"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tracking", default="sqlite:///mlflow.db")
    ap.add_argument("--experiment", default="svbench-demo")
    ap.add_argument("--storage", default="runs/search/svbench-search.journal")
    args = ap.parse_args()
    import mlflow

    mlflow.set_tracking_uri(args.tracking)
    OUT.mkdir(parents=True, exist_ok=True)
    bin_dir = Path(sys.executable).parent
    ports = free_port(), free_port()
    ui = serve([str(bin_dir / "mlflow"), "ui", "--backend-store-uri", args.tracking, "--host", "127.0.0.1", "--port",
                str(ports[0])], f"http://127.0.0.1:{ports[0]}/health")
    dash = serve([str(bin_dir / "svbench"), "dashboard", "--storage", args.storage, "--port", str(ports[1])],
                 f"http://127.0.0.1:{ports[1]}/dashboard")
    driver = browser()
    try:
        mlflow_shots(driver, f"http://127.0.0.1:{ports[0]}", args.experiment)
        optuna_shot(driver, f"http://127.0.0.1:{ports[1]}")
    finally:
        driver.quit()
        ui.terminate()
        dash.terminate()
    print(f"screenshots in {OUT}")


if __name__ == "__main__":
    main()
