-- sendqueue: hand Orthanc's failed store jobs to sendqueue the moment they fail.
--
-- Orthanc keeps only its last JobsHistorySize jobs; sendqueue's ingest reads that history
-- every poll_interval. On a busy Orthanc a failed job can leave the history before that:
-- this hook posts the job's ID to ingest's POST /api/orthanc-jobs at once, and ingest reads the
-- job back from Orthanc and queues its instances (once: the history watch skips it then).
--
-- Install: add this file to Orthanc's "LuaScripts" list and, if ingest does not listen on
-- 127.0.0.1:8100, set its URL in Orthanc's configuration:
--   "Sendqueue" : { "IngestUrl" : "http://127.0.0.1:8100", "Token" : "<an admin token>" }
-- The token is one of sendqueue's admin tokens ([retry] admin_token or [retry.admin_tokens]);
-- leave it out only where sendqueue runs with [retry] allow_anonymous = true.
-- It defines OnJobFailure: merge it by hand with another script that defines it too.

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

function OnJobFailure(jobId)
  local job = ParseJson(RestApiGet('/jobs/' .. jobId))
  if not STORE_JOBS[job['Type']] then
    return
  end
  local ok, answer = pcall(HttpPost, IngestUrl(), DumpJson({ orthanc_job = jobId }),
                           Headers())
  if not ok or answer == nil then
    -- ingest is down: its history watch still finds the job while Orthanc lists it.
    print('sendqueue: could not hand failed job ' .. jobId .. ' to ingest: ' .. tostring(answer))
  end
end
