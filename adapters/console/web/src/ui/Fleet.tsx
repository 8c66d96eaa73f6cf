import { fleetShares } from "../report";
import { Link, Problem, useApp, useLoad } from "./common";

/** FleetPage: each model's active devices by the firmware version they
 *  report (GET /api/fleet/firmware), each count a link to those devices. */
export function FleetPage() {
  const { api } = useApp();
  const fleet = useLoad(() => api.fleetFirmware(), []);
  const models = fleet.data ? fleetShares(fleet.data) : [];
  return (
    <section aria-labelledby="fleet-h">
      <h1 id="fleet-h">Fleet by firmware</h1>
      <p>The active devices of each model by the firmware version of their latest state report. A device reports at start, after an OTA and periodically; one that has not reported yet is counted as <em>not reported</em>.</p>
      <Problem error={fleet.error} />
      {fleet.data && models.length === 0 && <p class="muted">No active devices yet.</p>}
      {models.map((m) => (
        <div class="card" aria-labelledby={`fleet-${m.id}-h`}>
          <h2 id={`fleet-${m.id}-h`}><Link href={`/console/models/${m.id}`}>{m.code}</Link> <span class="muted">· {m.devices} active {m.devices === 1 ? "device" : "devices"}</span></h2>
          <table>
            <caption class="sr-only">Devices of {m.code} by reported firmware version</caption>
            <thead><tr><th scope="col">Firmware version</th><th scope="col">Devices</th><th scope="col">Share</th></tr></thead>
            <tbody>
              {m.versions.map((v) => (
                <tr>
                  <td>{v.version === null ? <span class="muted">not reported</span> : <code>{v.version}</code>}</td>
                  <td>{v.version === null ? v.devices : <Link href={`/console/devices?model_id=${m.id}&firmware_version=${encodeURIComponent(v.version)}&active=true`}>{v.devices}</Link>}</td>
                  <td><span class="share" aria-hidden="true"><span style={{ width: `${v.percent}%` }} /></span> {v.percent} %</td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      ))}
    </section>
  );
}
