{{/*
Names. The PyTorchJob's name becomes the prefix of the pods and Services the Training Operator
creates (NAME-master-0, NAME-worker-12), and Service names must be DNS-1035 labels of at most 63
characters, so every name here is at most 48 and must start with a letter. A longer name keeps its
first 39 characters and gets "-" and 8 hex digits of its sha256 (Helm's trunc + sha256sum idiom):
two releases that differ only past the cut never share an object, a claim or an output folder.
*/}}
{{- define "r1v.shorten" -}}
{{- if gt (len .) 48 }}
{{- printf "%s-%s" (trunc 39 . | trimSuffix "-") (sha256sum . | trunc 8) }}
{{- else }}
{{- . }}
{{- end }}
{{- end }}

{{- define "r1v.name" -}}
{{- include "r1v.shorten" (default .Chart.Name .Values.nameOverride) }}
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
{{- $name = include "r1v.shorten" $name }}
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

{{/* The evaluation's re-push CronJob. A CronJob's name is at most 52 characters (its Jobs add 11), so a
longer one keeps 36 characters of the release's name and 8 hex digits of its sha256. */}}
{{- define "r1v.evalRepushName" -}}
{{- $full := include "r1v.fullname" . }}
{{- $name := printf "%s-repush" (include "r1v.evalJobName" .) }}
{{- if gt (len $name) 52 }}
{{- printf "%s-%s-repush" (trunc 36 $full | trimSuffix "-") (sha256sum $full | trunc 8) }}
{{- else }}
{{- $name }}
{{- end }}
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
jobset.sigs.k8s.io/jobset-name: {{ include "r1v.jobName" . | quote }}
jobset.sigs.k8s.io/replicatedjob-name: node
batch.kubernetes.io/job-completion-index: "0"
{{- else }}
training.kubeflow.org/job-name: {{ include "r1v.jobName" . | quote }}
training.kubeflow.org/replica-type: master
training.kubeflow.org/replica-index: "0"
{{- end }}
{{- end }}

{{/* Kueue's labels on the training job (either kind). */}}
{{- define "r1v.kueueLabels" -}}
{{- with .Values.kueue.queueName }}
kueue.x-k8s.io/queue-name: {{ . | quote }}
{{- end }}
{{- with .Values.kueue.priorityClass }}
kueue.x-k8s.io/priority-class: {{ . | quote }}
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
helm.sh/chart: {{ include "r1v.chart" . | quote }}
{{ include "r1v.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service | quote }}
app.kubernetes.io/part-of: r1v
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "r1v.selectorLabels" -}}
app.kubernetes.io/name: {{ include "r1v.name" . | quote }}
app.kubernetes.io/instance: {{ .Release.Name | quote }}
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
    claimName: {{ include "r1v.claimName" . | quote }}
{{- end }}

{{- define "r1v.scriptsVolume" -}}
- name: scripts
  configMap:
    name: {{ include "r1v.scriptsConfigMap" . | quote }}
{{- end }}

{{/*
The read-only root filesystem's one writable scratch path: an emptyDir at /tmp in every pod, holding
HOME and the compiler caches (values.yaml, tmpDir). The shared volume and /dev/shm are the others.
*/}}
{{- define "r1v.tmpVolume" -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ .Values.tmpDir.sizeLimit | quote }}
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
          name: {{ include "r1v.recipeConfigMap" . | quote }}
{{- with .Values.recipe.existingConfigMap }}
      - configMap:
          name: {{ . | quote }}
          items:
            - key: {{ $.Values.recipe.existingConfigMapKey | quote }}
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

{{/* Whole seconds (rounded up) of a Prometheus duration the schema allows: 0, or units from y to ms in order (1h30m, 1d, 500ms). */}}
{{- define "r1v.durationSeconds" -}}
{{- $units := dict "y" 31536000 "w" 604800 "d" 86400 "h" 3600 "m" 60 "s" 1 -}}
{{- $seconds := 0 -}}
{{- $ms := 0 -}}
{{- range $part := regexFindAll "[0-9]+(ms|y|w|d|h|m|s)" (toString .) -1 -}}
{{- $n := regexFind "^[0-9]+" $part | int -}}
{{- $unit := trimPrefix (regexFind "^[0-9]+" $part) $part -}}
{{- if eq $unit "ms" }}{{ $ms = add $ms $n }}{{ else }}{{ $seconds = add $seconds (mul $n (get $units $unit)) }}{{ end -}}
{{- end -}}
{{- add $seconds (div (add $ms 999) 1000) -}}
{{- end }}

{{/*
The recipe keys the chart owns, as JSON {recipe key: [the chart value that sets it, its value]}.
Each is written into the recipe ConfigMap and passed on the trainer's command line from the same
value, and data prep, the launcher and the evaluator use the same paths: they cannot disagree.
*/}}
{{- define "r1v.recipeOwned" -}}
{{- $owned := dict
  "model_name_or_path" (list "model.path" (include "r1v.modelPath" .))
  "dataset_name" (list "dataset.path" (include "r1v.datasetPath" .))
  "output_dir" (list "runName" (include "r1v.outputDir" .))
  "metrics_port" (list "monitoring.port" (int .Values.monitoring.port))
  "metrics_grace_seconds" (list "monitoring.interval" (include "r1v.metricsGraceSeconds" . | int)) }}
{{- $ds := list "trainer.deepspeed" nil }}
{{- if ne .Values.trainer.deepspeed "none" }}
{{- $ds = list "trainer.deepspeed" (printf "/etc/r1v/%s.json" .Values.trainer.deepspeed) }}
{{- end }}
{{- $_ := set $owned "deepspeed" $ds }}
{{- toJson $owned }}
{{- end }}

{{/*
The recipe the trainer reads (/etc/r1v/recipe.yaml): the seed recipe (files/recipe.yaml, the
repository's recipes/r1v_qwen2vl_2b_clevr.yaml) as it is written, comments and number spellings
included, with each line of a key set below commented out; then recipe.inline's keys and the
chart-owned keys. With recipe.replace, recipe.inline alone and the chart-owned keys. A
recipe.inline or trainer.extraArgs entry for a chart-owned key with another value fails the
render, naming both. (The seed is flat, one key a line: tests/chart/test_recipe.py.)
*/}}
{{- define "r1v.recipe" -}}
{{- $owned := include "r1v.recipeOwned" . | fromJson }}
{{- $set := dict }}
{{- $inline := dict }}
{{- range $key, $value := .Values.recipe.inline }}
{{- if not (hasKey $owned $key) }}
{{- $_ := set $inline $key $value }}
{{- end }}
{{- with get $owned $key }}
{{- if ne (toString $value) (toString (index . 1)) }}
{{- fail (printf "recipe.inline.%s conflicts with %s: set %s instead (the chart writes %s: %v into the recipe, and data prep, the launcher and the evaluator use the same value)" $key (index . 0) (index . 0) $key (index . 1)) }}
{{- end }}
{{- end }}
{{- $_ := set $set $key $value }}
{{- end }}
{{- range $arg := .Values.trainer.extraArgs }}
{{- $flag := toString $arg | trimPrefix "--" | splitList "=" | first }}
{{- if and (hasPrefix "--" (toString $arg)) (hasKey $owned $flag) }}
{{- fail (printf "trainer.extraArgs %s conflicts with %s: set %s instead (the chart sets --%s from it)" (toString $arg) (index (get $owned $flag) 0) (index (get $owned $flag) 0) $flag) }}
{{- end }}
{{- end }}
{{- range $key, $pair := $owned }}
{{- $_ := set $set $key (index $pair 1) }}
{{- end }}
{{- if not .Values.recipe.replace }}
{{- range $line := .Files.Get "files/recipe.yaml" | trimSuffix "\n" | splitList "\n" }}
{{- $key := regexFind "^[A-Za-z_][A-Za-z0-9_]*:" $line | trimSuffix ":" }}
{{- if and $key (hasKey $set $key) }}
# (set below) {{ $line }}
{{- else }}
{{ $line }}
{{- end }}
{{- end }}
{{- end }}
{{- with $inline }}
# --- recipe.inline ---
{{ toYaml . }}
{{- end }}
# --- the chart's keys ---
{{- range $key, $pair := $owned }}
{{ toYaml (dict $key (index $pair 1)) }}
{{- end }}
{{- end }}

{{/*
Checks a schema cannot express, each failing the render in one line naming the value: the
Kubernetes version each job kind needs (.Capabilities: the cluster's under `helm install` and
r1v_submit), paths every pod must find on the shared volume, and GPU counts set twice.
*/}}
{{- define "r1v.checkValues" -}}
{{- $kube := .Capabilities.KubeVersion.Version }}
{{- if and .Chart.KubeVersion (not (semverCompare .Chart.KubeVersion $kube)) }}
{{- fail (printf "Kubernetes %s: this chart needs %s" $kube .Chart.KubeVersion) }}
{{- end }}
{{- if and (eq .Values.jobKind "TrainJob") (semverCompare "<1.31.0-0" $kube) }}
{{- fail (printf "jobKind=TrainJob needs Kubernetes 1.31 or newer (Kubeflow Trainer v2.3 and JobSet), this cluster is %s: use jobKind=PyTorchJob (1.27+) or a newer cluster" $kube) }}
{{- end }}
{{- $root := include "r1v.dataRoot" . }}
{{- $paths := dict "model.path" .Values.model.path "dataset.path" .Values.dataset.path "superclevr.dir" .Values.superclevr.dir }}
{{- range $key := keys $paths | sortAlpha }}
{{- $path := get $paths $key }}
{{- if and $path (not (hasPrefix (printf "%s/" $root) (clean $path))) }}
{{- fail (printf "%s %q is outside the shared volume, which every pod mounts at %s: use a path under %s/ (e.g. %s/models/NAME, %s/datasets/NAME)" $key $path $root $root $root $root) }}
{{- end }}
{{- end }}
{{- range $part := list "requests" "limits" }}
{{- $set := get ($.Values.trainer.resources | default dict) $part | default dict }}
{{- if and (hasKey $set "nvidia.com/gpu") (ne (toString (get $set "nvidia.com/gpu")) (toString $.Values.gpusPerNode)) }}
{{- fail (printf "trainer.resources.%s.nvidia.com/gpu=%v disagrees with gpusPerNode=%v: set gpusPerNode alone (the GPUs of every training pod and torchrun's processes per pod)" $part (get $set "nvidia.com/gpu") $.Values.gpusPerNode) }}
{{- end }}
{{- end }}
{{- end }}
