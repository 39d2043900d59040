{{/*
Names. The PyTorchJob's name becomes the prefix of the pods and Services the Training Operator
creates (NAME-master-0, NAME-worker-12), and Service names must be DNS-1035 labels of at most 63
characters, so every name here is cut to 48 and must start with a letter.
*/}}
{{- define "r1v.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 48 | trimSuffix "-" }}
{{- end }}

{{- define "r1v.fullname" -}}
{{- $name := "" }}
{{- if .Values.fullnameOverride }}
{{- $name = .Values.fullnameOverride }}
{{- else if contains (default .Chart.Name .Values.nameOverride) .Release.Name }}
{{- $name = .Release.Name }}
{{- else }}
{{- $name = printf "%s-%s" .Release.Name (default .Chart.Name .Values.nameOverride) }}
{{- end }}
{{- $name = $name | trunc 48 | trimSuffix "-" }}
{{- if not (regexMatch "^[a-z]([-a-z0-9]*[a-z0-9])?$" $name) }}
{{- fail (printf "the name %q (from the release name or fullnameOverride) must be a DNS-1035 label: lower-case letters, digits and '-', starting with a letter; the Training Operator rejects anything else" $name) }}
{{- end }}
{{- $name }}
{{- end }}

{{/* The training job (PyTorchJob or TrainJob), and so the prefix of the pods and Services its operator creates. */}}
{{- define "r1v.jobName" -}}
{{- include "r1v.fullname" . }}
{{- end }}

{{/* The training job's API as group/version/plural; the evaluator's Role and the helm test read exactly this. */}}
{{- define "r1v.jobAPI" -}}
{{- if eq .Values.jobKind "TrainJob" }}trainer.kubeflow.org/v1alpha1/trainjobs{{ else }}kubeflow.org/v1/pytorchjobs{{ end }}
{{- end }}

{{/* The evaluation Job's name (job-eval.yaml; the PrometheusRule's failed-Job alert). */}}
{{- define "r1v.evalJobName" -}}
{{ include "r1v.fullname" . }}-eval
{{- end }}

{{/* The CPU-only Job that resumes the evaluation Job when training succeeded. */}}
{{- define "r1v.evalGateJobName" -}}
{{ include "r1v.evalJobName" . }}-gate
{{- end }}

{{/* The gate's --wait-for: KIND/NAME. */}}
{{- define "r1v.jobRef" -}}
{{- printf "%s/%s" (lower .Values.jobKind) (include "r1v.jobName" .) }}
{{- end }}

{{/* The trainer container's name: the operator's default container (PyTorchJob) or the runtime's trainer container (TrainJob). */}}
{{- define "r1v.trainerContainer" -}}
{{- if eq .Values.jobKind "TrainJob" }}node{{ else }}pytorch{{ end }}
{{- end }}

{{/* "true" when the TrainJob runs on an existing ClusterTrainingRuntime instead of the chart's TrainingRuntime. */}}
{{- define "r1v.clusterRuntime" -}}
{{- if and (eq .Values.jobKind "TrainJob") .Values.trainJob.clusterTrainingRuntime }}true{{ end }}
{{- end }}

{{/* Labels the operator puts on the rank-0 pod, the one serving /metrics. */}}
{{- define "r1v.rankZeroLabels" -}}
{{- if eq .Values.jobKind "TrainJob" }}
jobset.sigs.k8s.io/jobset-name: {{ include "r1v.jobName" . }}
jobset.sigs.k8s.io/replicatedjob-name: node
batch.kubernetes.io/job-completion-index: "0"
{{- else }}
training.kubeflow.org/job-name: {{ include "r1v.jobName" . }}
training.kubeflow.org/replica-type: master
training.kubeflow.org/replica-index: "0"
{{- end }}
{{- end }}

{{/* Kueue's labels on the training job (either kind). */}}
{{- define "r1v.kueueLabels" -}}
{{- with .Values.kueue.queueName }}
kueue.x-k8s.io/queue-name: {{ . }}
{{- end }}
{{- with .Values.kueue.priorityClass }}
kueue.x-k8s.io/priority-class: {{ . }}
{{- end }}
{{- end }}

{{- define "r1v.runName" -}}
{{- default (include "r1v.fullname" .) .Values.runName }}
{{- end }}

{{- define "r1v.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels every object carries; kubectl and Grafana select on app.kubernetes.io/instance. */}}
{{- define "r1v.labels" -}}
helm.sh/chart: {{ include "r1v.chart" . }}
{{ include "r1v.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: r1v
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "r1v.selectorLabels" -}}
app.kubernetes.io/name: {{ include "r1v.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Fixed layout of the shared volume (docs/architecture.md): every pod mounts it at /data. */}}
{{- define "r1v.dataRoot" -}}/data{{- end }}

{{- define "r1v.outputDir" -}}
{{- printf "%s/runs/%s" (include "r1v.dataRoot" .) (include "r1v.runName" .) }}
{{- end }}

{{- define "r1v.modelPath" -}}
{{- default (printf "%s/models/%s" (include "r1v.dataRoot" .) (base .Values.model.id)) .Values.model.path }}
{{- end }}

{{- define "r1v.datasetPath" -}}
{{- default (printf "%s/datasets/%s" (include "r1v.dataRoot" .) (base .Values.dataset.id)) .Values.dataset.path }}
{{- end }}

{{- define "r1v.superclevrDir" -}}
{{- default (printf "%s/datasets/superclevr" (include "r1v.dataRoot" .)) .Values.superclevr.dir }}
{{- end }}

{{- define "r1v.superclevrQuestions" -}}
{{- printf "%s/%s" (include "r1v.superclevrDir" .) (base .Values.superclevr.questionsUrl) }}
{{- end }}

{{/* One marker per release: a later release re-runs (cheap, idempotent) preparation for its own values. */}}
{{- define "r1v.dataPrepMarker" -}}
{{- printf "%s/.r1v-prep/%s.json" (include "r1v.dataRoot" .) (include "r1v.fullname" .) }}
{{- end }}

{{- define "r1v.claimName" -}}
{{- default (printf "%s-data" (include "r1v.fullname" .)) .Values.storage.existingClaim }}
{{- end }}

{{- define "r1v.recipeConfigMap" -}}
{{- printf "%s-recipe" (include "r1v.fullname" .) }}
{{- end }}

{{- define "r1v.evalServiceAccount" -}}
{{- printf "%s-eval" (include "r1v.fullname" .) }}
{{- end }}

{{/* The training pods' ServiceAccount: the created one, a named existing one, or empty (the namespace's default). */}}
{{- define "r1v.trainerServiceAccount" -}}
{{- $sa := .Values.trainer.serviceAccount }}
{{- if $sa.create }}{{ default (printf "%s-trainer" (include "r1v.fullname" .)) $sa.name }}{{ else }}{{ $sa.name }}{{ end }}
{{- end }}

{{/* The ConfigMap of the chart's scripts (files/launch.sh, data_prep.py, helm_test.py), mounted at r1v.scriptsDir. */}}
{{- define "r1v.scriptsConfigMap" -}}
{{- printf "%s-scripts" (include "r1v.fullname" .) }}
{{- end }}

{{- define "r1v.scriptsDir" -}}/opt/r1v/scripts{{- end }}

{{/* repository@digest when image.*.digest is set (a re-pushed tag cannot change what runs), else repository:tag. */}}
{{- define "r1v.image" -}}
{{- if .image.digest }}
{{- printf "%s@%s" .image.repository .image.digest }}
{{- else }}
{{- printf "%s:%s" .image.repository (default .root.Chart.AppVersion .image.tag) }}
{{- end }}
{{- end }}

{{- define "r1v.trainerImage" -}}
{{- include "r1v.image" (dict "image" .Values.image.trainer "root" .) }}
{{- end }}

{{- define "r1v.evaluatorImage" -}}
{{- include "r1v.image" (dict "image" .Values.image.evaluator "root" .) }}
{{- end }}

{{/* Hub access: trainer and evaluator read local paths only, so offline mode turns a wrong path into an error instead of a silent download. */}}
{{- define "r1v.hfEnv" -}}
- name: HF_HOME
  value: {{ include "r1v.dataRoot" . }}/hf-cache
{{- if .Values.offline }}
- name: HF_HUB_OFFLINE
  value: "1"
- name: HF_DATASETS_OFFLINE
  value: "1"
{{- end }}
- name: PYTHONUNBUFFERED
  value: "1"
{{- end }}

{{/* The shared data claim every workload pod mounts at r1v.dataRoot. */}}
{{- define "r1v.dataVolume" -}}
- name: data
  persistentVolumeClaim:
    claimName: {{ include "r1v.claimName" . }}
{{- end }}

{{- define "r1v.scriptsVolume" -}}
- name: scripts
  configMap:
    name: {{ include "r1v.scriptsConfigMap" . }}
{{- end }}

{{/*
The read-only root filesystem's one writable scratch path: an emptyDir at /tmp in every pod, holding
HOME and the compiler caches (values.yaml, tmpDir). The shared volume and /dev/shm are the others.
*/}}
{{- define "r1v.tmpVolume" -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ .Values.tmpDir.sizeLimit }}
{{- end }}

{{- define "r1v.tmpMount" -}}
- name: tmp
  mountPath: /tmp
{{- end }}

{{/* Where the programs' caches go (each defaults under HOME or /tmp; set so that no image default leads elsewhere). */}}
{{- define "r1v.tmpEnv" -}}
- name: HOME
  value: /tmp
- name: XDG_CACHE_HOME
  value: /tmp/.cache
- name: TRITON_CACHE_DIR
  value: /tmp/.triton
- name: TORCHINDUCTOR_CACHE_DIR
  value: /tmp/torchinductor
- name: MPLCONFIGDIR
  value: /tmp/.config/matplotlib
{{- end }}

{{/* The pod's namespace from the downward API: every pod has it (metrics put it on every series). */}}
{{- define "r1v.podNamespaceEnv" -}}
- name: POD_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
{{- end }}

{{/*
Security contexts: a component's own (trainer/evaluator/dataPrep .podSecurityContext, .securityContext)
merged over the top-level ones, key by key. Called with (dict "root" $ "component" .Values.X).
*/}}
{{- define "r1v.podSecurityContext" -}}
{{- toYaml (mergeOverwrite (deepCopy .root.Values.podSecurityContext) (.component.podSecurityContext | default dict)) }}
{{- end }}

{{- define "r1v.securityContext" -}}
{{- toYaml (mergeOverwrite (deepCopy .root.Values.securityContext) (.component.securityContext | default dict)) }}
{{- end }}

{{/* The recipe directory: the chart's ConfigMap (DeepSpeed configs, default or inline recipe), or a user's ConfigMap projected in as recipe.yaml. */}}
{{- define "r1v.recipeVolume" -}}
- name: recipe
  projected:
    sources:
      - configMap:
          name: {{ include "r1v.recipeConfigMap" . }}
{{- with .Values.recipe.existingConfigMap }}
      - configMap:
          name: {{ . }}
          items:
            - key: {{ $.Values.recipe.existingConfigMapKey }}
              path: recipe.yaml
{{- end }}
{{- end }}

{{- define "r1v.imagePullSecrets" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/*
"true" when the prometheus-operator objects (monitors, rules) render, else empty: monitoring.enabled
and either the cluster serves monitoring.coreos.com/v1 (.Capabilities, as `helm install` sees it) or
monitoring.forceMonitoringAPI (offline rendering: helm template, GitOps, CRDs in the same sync).
*/}}
{{- define "r1v.monitoringAPI" -}}
{{- if and .Values.monitoring.enabled (or (.Capabilities.APIVersions.Has "monitoring.coreos.com/v1") .Values.monitoring.forceMonitoringAPI) }}true{{ end }}
{{- end }}

{{/*
Seconds rank 0's /metrics keeps serving after the final model (the trainer's metrics_grace_seconds):
two scrape intervals (monitoring.interval, e.g. 15s, 1m), and never under the trainer's default 60.
*/}}
{{- define "r1v.metricsGraceSeconds" -}}
{{- max 60 (mul 2 (include "r1v.durationSeconds" .Values.monitoring.interval | int)) -}}
{{- end }}

{{/* Whole seconds (rounded up) of a duration the schema allows: NUMBER followed by ms, s, m or h. */}}
{{- define "r1v.durationSeconds" -}}
{{- $d := toString . -}}
{{- $n := regexFind "^[0-9]+" $d | int -}}
{{- get (dict "ms" (div (add $n 999) 1000) "s" $n "m" (mul $n 60) "h" (mul $n 3600)) (trimPrefix (toString $n) $d) -}}
{{- end }}
