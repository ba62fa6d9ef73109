-- sendqueue: send through sendqueue what Orthanc Explorer, a viewer (OHIF's "send") or a
-- script asks Orthanc to send, so that a failed transfer is retried, parked and visible.
--
-- Every store job Orthanc starts (POST /modalities/{id}/store, /peers/{id}/store, the
-- "Send to DICOM modality" and "Send to Orthanc peer" buttons, Lua SendToModality) is
-- offered to sendqueue's ingest. For a modality or peer a sendqueue destination stands for
-- (`orthanc_modality`, `orthanc_peer`, or [ingest] capture_failed_jobs = "all"), ingest
-- cancels the job in Orthanc and queues its instances itself; other jobs stay Orthanc's.
-- Orthanc then shows the job as cancelled: the console shows where its instances are.
--
-- Install: add this file to Orthanc's "LuaScripts" list; if ingest does not listen on
-- 127.0.0.1:8100, set "Sendqueue" : { "IngestUrl" : "http://HOST:PORT" } in Orthanc's
-- configuration, and "Token" there to one of sendqueue's admin tokens ([retry] admin_token
-- or [retry.admin_tokens]; left out only with [retry] allow_anonymous = true). It defines OnJobSubmitted: merge it by hand with another script that
-- defines it too.

local function IngestUrl()
  local settings = GetOrthancConfiguration()['Sendqueue'] or {}
  local url = settings['IngestUrl'] or 'http://127.0.0.1:8100'
  return string.gsub(url, '/+$', '') .. '/api/orthanc-jobs'
end

local function Headers()
  local settings = GetOrthancConfiguration()['Sendqueue'] or {}
  local headers = { ['Content-Type'] = 'application/json' }
  if settings['Token'] then
    headers['Authorization'] = 'Bearer ' .. settings['Token']
  end
  return headers
end

local STORE_JOBS = { DicomModalityStore = true, OrthancPeerStore = true }

function OnJobSubmitted(jobId)
  local job = ParseJson(RestApiGet('/jobs/' .. jobId))
  if not STORE_JOBS[job['Type']] then
    return
  end
  local ok, answer = pcall(HttpPost, IngestUrl(),
                           DumpJson({ orthanc_job = jobId, take_over = true }),
                           Headers())
  if not ok or answer == nil then
    -- ingest is down: Orthanc sends it itself, and a failure is still captured later.
    print('sendqueue: could not hand job ' .. jobId .. ' to ingest: ' .. tostring(answer))
  end
end
